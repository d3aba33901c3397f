// Command vm-monitor is the in-guest end of the autoscaler-agent's
// websocket (ws://<vm>:10301/monitor): it asks for memory when Postgres's
// cgroup is under pressure, approves or denies downscales, and sizes
// Postgres's cache to the VM's memory. Started by the guest's init.
// vmscale:no-image
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/monitor"
	"github.com/vmscale/vmscale/pkg/monitor/cgroup"
	"github.com/vmscale/vmscale/pkg/monitor/filecache"
	"github.com/vmscale/vmscale/pkg/monitor/filecache/postgres"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
)

func main() {
	var addr, group, connstr, metricsAddr, mount, proc string
	for _, n := range []string{"addr", "a"} {
		flag.StringVar(&addr, n, "0.0.0.0:10301", "where the agent connects (websocket on /monitor)")
	}
	for _, n := range []string{"cgroup", "c"} {
		flag.StringVar(&group, n, "", "cgroup v2 group to watch, e.g. neon-postgres (none: no memory watching)")
	}
	for _, n := range []string{"pgconnstr", "p"} {
		flag.StringVar(&connstr, n, "", "Postgres connection string (none: no cache sizing)")
	}
	flag.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (empty: off)")
	flag.StringVar(&mount, "cgroup-mount", cgroup.DefaultMountpoint, "where cgroup v2 is mounted")
	flag.StringVar(&proc, "proc", "/proc", "where /proc is mounted (MemTotal)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, addr, group, connstr, metricsAddr, mount, proc); err != nil {
		log.Error("vm-monitor stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, addr, group, connstr, metricsAddr, mount, proc string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := monitor.NewMetrics(reg)
	core := &monitor.Core{
		CacheCfg: filecache.DefaultConfig(),
		MemTotal: monitor.MemTotalFrom(proc),
		Clock:    clock.RealClock{},
		Log:      log,
		Metrics:  metrics,
	}
	if _, err := core.MemTotal(); err != nil {
		return err
	}
	var upscales <-chan pressure.Request
	if group != "" {
		r, err := cgroup.Open(mount, group)
		if err != nil {
			return err
		}
		core.Watcher = cgroup.NewWatcher(r, clock.RealClock{}, log.With("cgroup", group))
		core.Watcher.OnSample = core.ObserveSample
		upscales = core.Watcher.Requests()
		go core.Watcher.Run(ctx)
		log.Info("watching cgroup memory", "dir", r.Dir(), "interval", pressure.SampleInterval)
	}
	if connstr != "" {
		pg, err := postgres.New(connstr, log.With("component", "filecache"))
		if err != nil {
			return err
		}
		defer pg.Close(context.Background())
		core.Cache = pg
	}

	srv := monitor.NewServer(core, upscales, log, metrics, clock.RealClock{})
	agentSrv := &http.Server{Addr: addr, Handler: srv.Routes(), ReadHeaderTimeout: 5 * time.Second}
	errs := make(chan error, 2)
	go func() { errs <- serve(agentSrv, "agent websocket") }()
	if metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		metricsSrv := &http.Server{Addr: metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { errs <- serve(metricsSrv, "metrics") }()
		defer metricsSrv.Close()
	}
	log.Info("vm-monitor listening", "addr", addr, "path", monitor.Path, "cgroup", group, "fileCache", connstr != "", "metrics", metricsAddr)

	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	srv.Close()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return agentSrv.Shutdown(shutdownCtx)
}

func serve(s *http.Server, what string) error {
	if err := s.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s on %s: %w", what, s.Addr, err)
	}
	return nil
}
