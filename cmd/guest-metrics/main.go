// Command guest-metrics serves the guest's system metrics for the
// autoscaler-agent on :9100/metrics (started by the guest's init).
// vmscale:no-image
package main

import (
	"flag"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmscale/vmscale/pkg/guestmetrics"
)

func main() {
	addr := flag.String("addr", "0.0.0.0:9100", "listen address")
	flag.Parse()
	reg := prometheus.NewRegistry()
	reg.MustRegister(guestmetrics.Collector{Proc: "/proc"})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	err := srv.ListenAndServe()
	slog.New(slog.NewTextHandler(os.Stderr, nil)).Error("guest-metrics stopped", "cmd", "guest-metrics", "err", err)
	os.Exit(1)
}
