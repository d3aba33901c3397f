// Command autoscaler-agent runs on every node (a DaemonSet): it scales the
// node's autoscaling-enabled VMs, talking to the scheduler plugin, each
// VM's vm-monitor and the apiserver (package agent).
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
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/vmscale/vmscale/pkg/agent"
)

func main() {
	var configPath, metricsAddr string
	flag.StringVar(&configPath, "config", "/etc/autoscaler-agent-config/config.json", "the agent's config file (format: docs/operations.md#the-agents-config-file)")
	flag.StringVar(&metricsAddr, "metrics-addr", ":9100", "serve Prometheus metrics here (empty: off)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log, configPath, metricsAddr); err != nil {
		log.Error("autoscaler-agent stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, configPath, metricsAddr string) error {
	cfg, err := agent.LoadConfig(configPath)
	if err != nil {
		return err
	}
	rest, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := agent.NewMetrics(reg)
	a, err := agent.New(agent.Options{Config: cfg, Node: os.Getenv("K8S_NODE_NAME"), Rest: rest, Log: log, Metrics: metrics})
	if err != nil {
		return err
	}
	if metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		defer srv.Close()
	}
	go func() {
		if err := a.ServeDump(ctx); err != nil {
			log.Error("state dump server stopped", "err", err)
		}
	}()
	return a.Run(ctx)
}
