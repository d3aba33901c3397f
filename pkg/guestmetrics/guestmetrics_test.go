package guestmetrics

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func fakeProc(t *testing.T, loadavg, meminfo string) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "loadavg"), []byte(loadavg), 0o644)
	os.WriteFile(filepath.Join(dir, "meminfo"), []byte(meminfo), 0o644)
	return dir
}

const meminfo = "MemTotal:        2000000 kB\nMemFree:  100 kB\nMemAvailable:    1500000 kB\nBuffers: 1 kB\nCached:           300000 kB\nSwapCached: 0 kB\n"

func TestExportsEveryGaugeOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector{Proc: fakeProc(t, "0.50 1.25 0.10 1/100 123\n", meminfo)})
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"host_load1": 0.5, "host_load5": 1.25,
		"host_memory_total_bytes": 2000000 * 1024, "host_memory_available_bytes": 1500000 * 1024,
		"host_memory_cached_bytes": 300000 * 1024,
	}
	if len(families) != len(want) {
		t.Fatalf("%d families; want %d", len(families), len(want))
	}
	for name, v := range want {
		f := families[name]
		if f == nil || f.GetType().String() != "GAUGE" || len(f.Metric) != 1 {
			t.Fatalf("%s: %v; want one gauge series", name, f)
		}
		if got := f.Metric[0].GetGauge().GetValue(); got != v {
			t.Errorf("%s = %v; want %v", name, got, v)
		}
	}
}

func TestParseErrors(t *testing.T) {
	if _, _, err := ParseLoadavg(strings.NewReader("garbage")); err == nil {
		t.Error("bad loadavg accepted")
	}
	if _, _, _, err := ParseMeminfo(strings.NewReader("MemTotal: 1 kB\n")); err == nil {
		t.Error("meminfo without MemAvailable accepted")
	}
	if _, err := Read(t.TempDir()); err == nil {
		t.Error("missing /proc files accepted")
	}
}
