package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/go-logr/logr"
)

func parseLogFlags(t *testing.T, args ...string) *logFlags {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f logFlags
	f.bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return &f
}

func TestLogFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		// what logr's Info, V(1) and V(5) write, through the slog bridge
		wantInfo, wantV1, wantV5 bool
		wantJSON                 bool
	}{
		{nil, true, false, false, true},
		{[]string{"--log-level=debug"}, true, true, false, true},
		{[]string{"--zap-log-level=debug"}, true, true, false, true},
		{[]string{"--zap-log-level=5"}, true, true, true, true},
		{[]string{"--log-level=error"}, false, false, false, true},
		{[]string{"--log-format=text"}, true, false, false, false},
		{[]string{"--zap-encoder=console"}, true, false, false, false},
		{[]string{"--zap-devel"}, true, true, false, false},
		{[]string{"--zap-devel", "--zap-encoder=json", "--zap-log-level=info"}, true, false, false, true},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			log := logr.FromSlogHandler(parseLogFlags(t, c.args...).logger(&out).Handler())
			for _, l := range []struct {
				log  logr.Logger
				msg  string
				want bool
			}{{log, "info-line", c.wantInfo}, {log.V(1), "v1-line", c.wantV1}, {log.V(5), "v5-line", c.wantV5}} {
				l.log.Info(l.msg, "vm", "default/a")
				if got := strings.Contains(out.String(), l.msg); got != l.want {
					t.Errorf("%s written: %v, want %v (output %q)", l.msg, got, l.want, out.String())
				}
			}
			if c.wantInfo {
				first, _, _ := strings.Cut(out.String(), "\n")
				isJSON := json.Valid([]byte(first))
				if isJSON != c.wantJSON {
					t.Errorf("JSON output: %v, want %v (%q)", isJSON, c.wantJSON, first)
				}
			}
		})
	}
}

func TestLogFlagsRejectNonsense(t *testing.T) {
	for _, args := range [][]string{{"--log-level=loud"}, {"--log-level=0"}, {"--log-format=xml"}, {"--zap-stacktrace-level=error"}, {"--zap-time-encoding=iso8601"}} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var f logFlags
		f.bind(fs)
		if err := fs.Parse(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestParseOptions(t *testing.T) {
	good := runConfig{defaultCPUScaling: "QmpScaling", ipamRange: "10.100.0.0/16", ipamPool: "ns/pool", diskCopyCommand: "cp -a"}
	good.settings.RunnerImage = "runner:1"
	o, err := parseOptions(good)
	if err != nil {
		t.Fatal(err)
	}
	if o.ipamPool.String() != "ns/pool" || o.settings.DefaultCPUScalingMode != "QmpScaling" || strings.Join(o.settings.DiskCopyCommand, "|") != "cp|-a" {
		t.Errorf("options = %+v", o)
	}
	for _, c := range []struct {
		change func(*runConfig)
		want   string
	}{
		{func(c *runConfig) { c.defaultCPUScaling = "Turbo" }, `--default-cpu-scaling-mode: "Turbo" is neither QmpScaling nor SysfsScaling`},
		{func(c *runConfig) { c.settings.RunnerImage = "" }, "--runner-image (or $VM_RUNNER_IMAGE) is required"},
		{func(c *runConfig) { c.ipamPool = "pool" }, `--ipam-pool-name: "pool" is not namespace/name`},
		{func(c *runConfig) { c.selfSigned, c.webhookService = true, "svc" }, `--webhook-service: "svc" is not namespace/name`},
		{func(c *runConfig) { c.skipUpdateValidation = "x" }, "skip-update-validation-for"},
	} {
		cfg := good
		c.change(&cfg)
		if _, err := parseOptions(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want one with %q", err, c.want)
		}
	}
}
