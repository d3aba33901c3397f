package scrape

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/guestmetrics"
)

// TestSystemFromGuestExporter scrapes the real guest exporter (serving a
// /proc laid out in a temp folder) over HTTP.
func TestSystemFromGuestExporter(t *testing.T) {
	proc := t.TempDir()
	must(t, os.WriteFile(filepath.Join(proc, "loadavg"), []byte("1.50 0.75 0.20 2/100 1234\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal:        2097152 kB\nMemFree:          100000 kB\nMemAvailable:    1048576 kB\nCached:           524288 kB\n"), 0o644))
	reg := prometheus.NewRegistry()
	reg.MustRegister(guestmetrics.Collector{Proc: proc})
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	f := &Fetcher{Client: srv.Client()}
	var buf bytes.Buffer
	page, err := f.Get(context.Background(), srv.URL, &buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseSystem(page)
	if err != nil {
		t.Fatalf("%v\n%s", err, page)
	}
	want := core.SystemMetrics{Load1: 1.5, Load5: 0.75, MemTotal: 2 << 30, MemAvailable: 1 << 30, MemCached: 512 << 20}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

const goodSystem = `# HELP host_load1 x
# TYPE host_load1 gauge
host_load1 0.5
# TYPE host_load5 gauge
host_load5 0.25
# TYPE host_memory_total_bytes gauge
host_memory_total_bytes 1.073741824e+09
# TYPE host_memory_available_bytes gauge
host_memory_available_bytes 5e8
# TYPE host_memory_cached_bytes gauge
host_memory_cached_bytes 1e8
# TYPE other_counter counter
other_counter{a="b"} 7
`

func TestSystemStrict(t *testing.T) {
	if _, err := ParseSystem([]byte(goodSystem)); err != nil {
		t.Fatalf("good page rejected: %v", err)
	}
	for name, tc := range map[string]struct{ from, to, err string }{
		"counter":          {"# TYPE host_load1 gauge", "# TYPE host_load1 counter", "want a gauge"},
		"untyped":          {"# TYPE host_load5 gauge\n", "", "want a gauge"},
		"missing":          {"host_memory_cached_bytes 1e8\n", "", "missing"},
		"two series":       {"host_load1 0.5", "host_load1{cpu=\"0\"} 0.5\nhost_load1{cpu=\"1\"} 0.5", "2 series"},
		"NaN":              {"host_load1 0.5", "host_load1 NaN", "NaN"},
		"negative":         {"host_load5 0.25", "host_load5 -1", "-1"},
		"garbage value":    {"host_load1 0.5", "host_load1 zero", "value"},
		"avail over total": {"host_memory_available_bytes 5e8", "host_memory_available_bytes 5e9", "exceeds"},
	} {
		t.Run(name, func(t *testing.T) {
			page := strings.Replace(goodSystem, tc.from, tc.to, 1)
			_, err := ParseSystem([]byte(page))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want one containing %q", err, tc.err)
			}
		})
	}
}

const goodLFC = `# HELP lfc_approximate_working_set_size_windows pages
# TYPE lfc_approximate_working_set_size_windows gauge
lfc_approximate_working_set_size_windows{duration_seconds="120"} 20
lfc_approximate_working_set_size_windows{duration_seconds="60"} 10
lfc_approximate_working_set_size_windows{duration_seconds="180"} 30
# TYPE lfc_hits gauge
lfc_hits 100
`

// TestLFCServedFixture reads a served fixture of the file-cache exporter's
// page (stock Postgres has no such exporter; docs/design.md#where-vmscale-differs-and-why).
func TestLFCServedFixture(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(goodLFC)) }))
	defer srv.Close()
	var buf bytes.Buffer
	page, err := (&Fetcher{Client: srv.Client()}).Get(context.Background(), srv.URL, &buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseLFC(page)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.WSSPages) != 3 || got.WSSPages[0] != 10 || got.WSSPages[2] != 30 {
		t.Fatalf("windows %v", got.WSSPages)
	}
	for name, tc := range map[string]struct{ from, to, err string }{
		"gap":       {`"180"`, `"240"`, "want 180s"},
		"not 60":    {`"60"`, `"30"`, "want 60s"},
		"no label":  {`{duration_seconds="120"}`, `{window="120"}`, "label duration_seconds missing"},
		"bad label": {`"120"`, `"2m"`, "duration_seconds"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseLFC([]byte(strings.Replace(goodLFC, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestFetchErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", 503) }))
	defer srv.Close()
	var buf bytes.Buffer
	if _, err := (&Fetcher{Client: srv.Client()}).Get(context.Background(), srv.URL, &buf); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("err %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodSystem))
	f.Add([]byte(goodLFC))
	f.Add([]byte("host_load1{a=\"\\\"\"} 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseSystem(b); err == nil && m.MemAvailable > m.MemTotal {
			t.Fatal("accepted available > total")
		}
		if m, err := ParseLFC(b); err == nil {
			for _, v := range m.WSSPages {
				if v < 0 {
					t.Fatal("negative pages accepted")
				}
			}
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
