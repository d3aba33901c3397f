package scrape

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmscale/vmscale/pkg/guestmetrics"
)

// TestTargetKeepsOneConnection scrapes the real guest exporter three times
// over one connection, then survives the server closing it.
func TestTargetKeepsOneConnection(t *testing.T) {
	proc := t.TempDir()
	must(t, os.WriteFile(filepath.Join(proc, "loadavg"), []byte("0.25 0.5 0 1/1 1\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal: 1024 kB\nMemAvailable: 512 kB\nCached: 0 kB\n"), 0o644))
	reg := prometheus.NewRegistry()
	reg.MustRegister(guestmetrics.Collector{Proc: proc})
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	tg := &Target{Addr: strings.TrimPrefix(srv.URL, "http://"), Path: "/metrics"}
	defer tg.Close()
	var buf bytes.Buffer
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		page, err := tg.Get(ctx, &buf)
		cancel()
		if err != nil {
			t.Fatalf("scrape %d: %v", i, err)
		}
		m, err := ParseSystem(page)
		if err != nil || m.Load1 != 0.25 || m.MemTotal != 1<<20 {
			t.Fatalf("scrape %d: %+v %v", i, m, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 3 scrapes, want 1", n)
	}
	srv.CloseClientConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tg.Get(ctx, &buf); err != nil {
		t.Fatalf("after the server dropped the connection: %v", err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want a second one", n)
	}
}

func TestTargetErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", 503) }))
	defer srv.Close()
	tg := &Target{Addr: strings.TrimPrefix(srv.URL, "http://"), Path: "/metrics"}
	defer tg.Close()
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tg.Get(ctx, &buf); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("err %v", err)
	}
	srv.Close()
	if _, err := tg.Get(ctx, &buf); err == nil {
		t.Fatal("scrape of a closed server succeeded")
	}
}
