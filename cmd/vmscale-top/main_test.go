package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/guestmetrics"
)

// exporter serves the real guest exporter over a /proc folder of our own.
func exporter(t *testing.T) int {
	t.Helper()
	proc := t.TempDir()
	must(t, os.WriteFile(filepath.Join(proc, "loadavg"), []byte("0.42 0.30 0.20 1/100 4242\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal: 1000000 kB\nMemAvailable: 600000 kB\nCached: 200000 kB\n"), 0o644))
	reg := prometheus.NewRegistry()
	reg.MustRegister(guestmetrics.Collector{Proc: proc})
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testSource(t *testing.T) *source {
	scheme := runtime.NewScheme()
	must(t, vmv1.AddToScheme(scheme))
	cpus := vmv1.MilliCPU(1000)
	mem := resource.MustParse("512Mi")
	mk := func(name, ip string) *vmv1.VirtualMachine {
		return &vmv1.VirtualMachine{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo",
				Annotations: map[string]string{"internal.autoscaling.neon.tech/resources-approved": `{"vCPUs":1,"mem":"512Mi"}`}},
			Spec: vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 250, Max: 2000, Use: 1000},
				MemorySlotSize: resource.MustParse("256Mi"), MemorySlots: vmv1.MemorySlots{Min: 2, Max: 8, Use: 2}}},
			Status: vmv1.VirtualMachineStatus{Phase: vmv1.VmRunning, PodIP: ip, Node: "node-a", CPUs: &cpus, MemorySize: &mem},
		}
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(mk("up", "127.0.0.1"), mk("noexporter", "127.0.0.2")).Build()
	return &source{c: c, ns: "demo", metricsPort: exporter(t), http: &http.Client{Timeout: scrapeTimeout}}
}

// dropTime cuts the TIME column off each row (the header keeps it).
func dropTime(out string) []string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i := 1; i < len(lines); i++ {
		lines[i] = lines[i][10:]
	}
	return lines
}

func TestOnce(t *testing.T) {
	src := testSource(t)
	var out bytes.Buffer
	code := run(context.Background(), src, []string{"up", "noexporter", "gone"}, true, time.Second, false, nil, &out)
	if code != 1 {
		t.Errorf("exit status %d, want 1 (a VM could not be read)", code)
	}
	got := dropTime(out.String())
	want := []string{
		"TIME      VM          PHASE         VCPUS      MEMORY       LOAD1  PERMIT      LATENCY    RESTARTS  NODE        NOTE",
		"up          Running       1/1        512Mi/512Mi  0.42   1/512Mi     -          0         node-a",
		"noexporter  Running       1/1        512Mi/512Mi  ?      1/512Mi     -          0         node-a      load: Get \"http://127.0.0.2:",
		`gone        ?             -          -            -      -           -          -         -           virtualmachines.vm.neon.tech "gone" not found`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("line %d:\n got %q\nwant %q...", i, got[i], want[i])
		}
	}
	if strings.ContainsRune(out.String(), '\x1b') {
		t.Error("escape codes in --once output")
	}
}

// Not a terminal: the header and each VM's row once, then nothing while
// nothing changes, and no escape codes.
func TestLogMode(t *testing.T) {
	src := testSource(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
	defer cancel()
	if code := run(ctx, src, []string{"up"}, false, 50*time.Millisecond, false, nil, &out); code != 0 {
		t.Errorf("exit status %d", code)
	}
	if got := dropTime(out.String()); len(got) != 2 || !strings.HasPrefix(got[1], "up  Running") || strings.ContainsRune(out.String(), '\x1b') {
		t.Errorf("log output %q", out.String())
	}
}

// A terminal gets the whole table redrawn at every sample.
func TestTerminalMode(t *testing.T) {
	src := testSource(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Millisecond)
	defer cancel()
	bannerPath := filepath.Join(t.TempDir(), "step")
	os.WriteFile(bannerPath, []byte("step 2 of 3: load\nignored\n"), 0o644)
	run(ctx, src, []string{"up"}, false, 50*time.Millisecond, true, &banner{path: bannerPath}, &out)
	if n := strings.Count(out.String(), "\x1b[H\x1b[2J"); n < 2 {
		t.Errorf("%d redraws in %q", n, out.String())
	}
	if n := strings.Count(out.String(), "\x1b[H\x1b[2Jstep 2 of 3: load\n\n"); n < 2 || strings.Contains(out.String(), "ignored") {
		t.Errorf("the banner's first line is not above every redraw: %q", out.String())
	}
}

// In a log the banner is printed once per change, as a comment line.
func TestLogModeBanner(t *testing.T) {
	src := testSource(t)
	var out bytes.Buffer
	path := filepath.Join(t.TempDir(), "step")
	os.WriteFile(path, []byte("loading"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	run(ctx, src, []string{"up"}, false, 50*time.Millisecond, false, &banner{path: path}, &out)
	if n := strings.Count(out.String(), "# loading\n"); n != 1 {
		t.Errorf("banner printed %d times: %q", n, out.String())
	}
}
