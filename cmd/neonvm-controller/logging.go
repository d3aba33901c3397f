package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
)

// logFlags are the log level and format. The controller logged through zap
// before, and deployments may still pass zap's flags: --zap-log-level and
// --zap-encoder are the same flags as --log-level and --log-format,
// --zap-devel still means text and debug; the two zap flags slog cannot
// honour (stack traces, time encodings) are refused with a message naming
// them rather than accepted and ignored.
type logFlags struct {
	level  levelFlag
	format formatFlag
	devel  bool
}

func (f *logFlags) bind(fs *flag.FlagSet) {
	f.level.level = slog.LevelInfo
	const levelHelp = "log level: debug, info, warn, error, or a number n > 0 for controller-runtime's V(n) logs"
	fs.Var(&f.level, "log-level", levelHelp)
	fs.Var(&f.level, "zap-log-level", "same as --log-level (the zap flag of earlier versions)")
	const formatHelp = "log format: json or text"
	fs.Var(&f.format, "log-format", formatHelp)
	fs.Var(&f.format, "zap-encoder", "same as --log-format; console means text (the zap flag of earlier versions)")
	fs.BoolVar(&f.devel, "zap-devel", false, "text logs at debug level unless --log-level/--log-format say otherwise (the zap flag of earlier versions)")
	fs.Func("zap-stacktrace-level", "not supported: refused (slog writes no stack traces)", func(string) error {
		return fmt.Errorf("--zap-stacktrace-level is not supported: the controller logs with log/slog, which writes no stack traces; remove the flag")
	})
	fs.Func("zap-time-encoding", "not supported: refused (times are RFC 3339)", func(string) error {
		return fmt.Errorf("--zap-time-encoding is not supported: the controller logs RFC 3339 times with log/slog; remove the flag")
	})
}

// logger is the process's logger on w, as the flags say.
func (f *logFlags) logger(w io.Writer) *slog.Logger {
	level, text := f.level.level, f.format.text
	if f.devel {
		if !f.level.set {
			level = slog.LevelDebug
		}
		if !f.format.set {
			text = true
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if text {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// levelFlag is a slog level by name, or a logr verbosity n (logr's V(n)
// logs at slog level -n through logr.FromSlogHandler).
type levelFlag struct {
	level slog.Level
	set   bool
}

func (l *levelFlag) String() string { return l.level.String() }

func (l *levelFlag) Set(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 {
			return fmt.Errorf("verbosity %d: want a number > 0 or a level name", n)
		}
		l.level, l.set = slog.Level(-n), true
		return nil
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("log level %q: want debug, info, warn, error or a number > 0", s)
	}
	l.level, l.set = lv, true
	return nil
}

// formatFlag is json or text (zap's console).
type formatFlag struct {
	text bool
	set  bool
}

func (f *formatFlag) String() string {
	if f.text {
		return "text"
	}
	return "json"
}

func (f *formatFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "json":
		f.text = false
	case "text", "console":
		f.text = true
	default:
		return fmt.Errorf("log format %q: want json or text", s)
	}
	f.set = true
	return nil
}
