// Package scrape reads a VM's metrics: the guest exporter's system gauges
// on :9100 and, when enabled, Postgres's file-cache gauges on :9499, both
// as Prometheus text. Parsing is strict: each metric the agent uses must be
// declared a gauge and have exactly one series (the working-set metric has
// one per window, 60 s apart from 60 s), or the scrape fails and the state
// machine treats the metrics as missing.
package scrape

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"

	"github.com/vmscale/vmscale/pkg/agent/core"
)

// System metric names, as the guest exporter (pkg/guestmetrics) serves them.
const (
	MetricLoad1        = "host_load1"
	MetricLoad5        = "host_load5"
	MetricMemTotal     = "host_memory_total_bytes"
	MetricMemAvailable = "host_memory_available_bytes"
	MetricMemCached    = "host_memory_cached_bytes"
	// MetricLFCWindows is the working set in pages, one series per window.
	MetricLFCWindows = "lfc_approximate_working_set_size_windows"
	lfcWindowLabel   = "duration_seconds"
)

var systemNames = []string{MetricLoad1, MetricLoad5, MetricMemTotal, MetricMemAvailable, MetricMemCached}

// sample is one series of a metric we read.
type sample struct {
	label string // the value of the one label we care about, if any
	value float64
}

// family collects what the text says about one metric.
type family struct {
	name    string
	typ     string
	samples []sample
}

// find is the family named name, nil if not wanted.
func find(want []family, name []byte) *family {
	for i := range want {
		if string(name) == want[i].name {
			return &want[i]
		}
	}
	return nil
}

// parse reads Prometheus text, keeping only the metrics in want.
func parse(text []byte, want []family, labelKey string) error {
	for lineNo := 1; len(text) > 0; lineNo++ {
		var line []byte
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			line, text = text, nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if line[0] == '#' {
			// "# TYPE <name> <type>"; other comments are skipped.
			rest, ok := bytes.CutPrefix(line, []byte("# TYPE "))
			if !ok {
				continue
			}
			rest = bytes.TrimSpace(rest)
			sp := bytes.IndexAny(rest, " \t")
			if sp < 0 {
				continue
			}
			if fam := find(want, rest[:sp]); fam != nil {
				if fam.typ != "" {
					return fmt.Errorf("line %d: second TYPE for %s", lineNo, rest[:sp])
				}
				fam.typ = string(bytes.TrimSpace(rest[sp:]))
			}
			continue
		}
		nameEnd := bytes.IndexAny(line, "{ \t")
		if nameEnd <= 0 {
			return fmt.Errorf("line %d: not a sample: %q", lineNo, truncate(line))
		}
		fam := find(want, line[:nameEnd])
		if fam == nil {
			continue
		}
		rest := line[nameEnd:]
		var s sample
		if rest[0] == '{' {
			end := bytes.IndexByte(rest, '}')
			if end < 0 {
				return fmt.Errorf("line %d: unterminated labels", lineNo)
			}
			v, err := labelValue(rest[1:end], labelKey)
			if err != nil {
				return fmt.Errorf("line %d: %w", lineNo, err)
			}
			s.label, rest = v, rest[end+1:]
		}
		fields := bytes.Fields(rest)
		if len(fields) < 1 || len(fields) > 2 {
			return fmt.Errorf("line %d: want a value and an optional timestamp, got %q", lineNo, truncate(rest))
		}
		v, err := strconv.ParseFloat(string(fields[0]), 64)
		if err != nil {
			return fmt.Errorf("line %d: value: %w", lineNo, err)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return fmt.Errorf("line %d: %s is %v", lineNo, line[:nameEnd], v)
		}
		s.value = v
		fam.samples = append(fam.samples, s)
	}
	for i := range want {
		fam := &want[i]
		if len(fam.samples) == 0 {
			return fmt.Errorf("metric %s missing", fam.name)
		}
		if fam.typ != "gauge" {
			return fmt.Errorf("metric %s is %q, want a gauge", fam.name, fam.typ)
		}
	}
	return nil
}

// labelValue finds key="…" in a label set (with Prometheus escapes).
func labelValue(labels []byte, key string) (string, error) {
	for len(labels) > 0 {
		eq := bytes.IndexByte(labels, '=')
		if eq < 0 || eq+1 >= len(labels) || labels[eq+1] != '"' {
			return "", fmt.Errorf("bad labels %q", truncate(labels))
		}
		name := string(bytes.TrimSpace(labels[:eq]))
		var val []byte
		i := eq + 2
		for ; i < len(labels) && labels[i] != '"'; i++ {
			if labels[i] == '\\' && i+1 < len(labels) {
				i++
				switch labels[i] {
				case 'n':
					val = append(val, '\n')
				default:
					val = append(val, labels[i])
				}
				continue
			}
			val = append(val, labels[i])
		}
		if i >= len(labels) {
			return "", fmt.Errorf("unterminated label value in %q", truncate(labels))
		}
		if name == key {
			return string(val), nil
		}
		labels = bytes.TrimLeft(labels[i+1:], ", ")
	}
	if key == "" {
		return "", nil
	}
	return "", fmt.Errorf("label %s missing", key)
}

// ParseSystem reads the guest exporter's page.
func ParseSystem(text []byte) (core.SystemMetrics, error) {
	var fams [5]family
	var one [5][1]sample // room for the one series each should have
	for i, n := range systemNames {
		fams[i] = family{name: n, samples: one[i][:0]}
	}
	if err := parse(text, fams[:], ""); err != nil {
		return core.SystemMetrics{}, fmt.Errorf("system metrics: %w", err)
	}
	for i, n := range systemNames {
		if len(fams[i].samples) != 1 {
			return core.SystemMetrics{}, fmt.Errorf("system metrics: %s has %d series, want 1", n, len(fams[i].samples))
		}
	}
	m := core.SystemMetrics{
		Load1: fams[0].samples[0].value, Load5: fams[1].samples[0].value,
		MemTotal: fams[2].samples[0].value, MemAvailable: fams[3].samples[0].value, MemCached: fams[4].samples[0].value,
	}
	if m.MemAvailable > m.MemTotal {
		return core.SystemMetrics{}, errors.New("system metrics: available memory exceeds total")
	}
	return m, nil
}

// ParseLFC reads the working-set windows from the file-cache exporter.
func ParseLFC(text []byte) (core.LFCMetrics, error) {
	fams := []family{{name: MetricLFCWindows}}
	if err := parse(text, fams, lfcWindowLabel); err != nil {
		return core.LFCMetrics{}, fmt.Errorf("LFC metrics: %w", err)
	}
	type window struct {
		secs  int
		pages float64
	}
	fam := &fams[0]
	ws := make([]window, 0, len(fam.samples))
	for _, s := range fam.samples {
		secs, err := strconv.Atoi(s.label)
		if err != nil {
			return core.LFCMetrics{}, fmt.Errorf("LFC metrics: %s=%q: %w", lfcWindowLabel, s.label, err)
		}
		ws = append(ws, window{secs, s.value})
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].secs < ws[j].secs })
	out := core.LFCMetrics{WSSPages: make([]float64, len(ws))}
	for i, w := range ws {
		if w.secs != 60*(i+1) {
			return core.LFCMetrics{}, fmt.Errorf("LFC metrics: window %d is %ds, want %ds (windows start at 60 and step by 60)", i, w.secs, 60*(i+1))
		}
		out.WSSPages[i] = w.pages
	}
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}
