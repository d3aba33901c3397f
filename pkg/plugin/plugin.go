// Package plugin is the AutoscaleEnforcer kube-scheduler plugin: it places
// VM runner pods only where their reservations fit, answers the
// autoscaler-agents' permit requests on :10299 by writing approvals on the
// VirtualMachines, and migrates VMs off nodes past their watermark
// (docs/protocols.md#permit-protocol and #scheduler-plugin). The accounting itself is in state, the
// wire handling in permit, the object reading in vmpod.
//
// Here, an agent's request runs permit_handler.go (record it, decide at
// once when the pod can grow now, else wait for a worker) and writeback.go
// (the one writer of a VM's annotations). The workers (queue.go) decide
// what an agent's request could not (approve.go) and move VMs off full
// nodes (migrate.go); events.go feeds the cluster's changes in, and each
// scheduler extension point has its file (filter.go, score.go, reserve.go,
// postfilter.go).
package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"
	"sigs.k8s.io/yaml"

	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
)

// Name is the plugin's name in the scheduler configuration.
const Name = "AutoscaleEnforcer"

// Verbosities of the plugin's detail lines, as klog -v levels (the bridge
// to klog maps slog level -n to V(n)), so the same -v shows the same lines.
const (
	// levelRetry: a reconcile failed once and will be retried.
	levelRetry = slog.Level(-2)
	// levelDetail: each approval written and each pod that fits nowhere.
	levelDetail = slog.Level(-3)
)

// AutoscaleEnforcer is the framework side of the plugin.
type AutoscaleEnforcer struct {
	e   *Enforcer
	cfg config.Config
	log *slog.Logger
}

var (
	_ fwk.FilterPlugin     = (*AutoscaleEnforcer)(nil)
	_ fwk.ScorePlugin      = (*AutoscaleEnforcer)(nil)
	_ fwk.ScoreExtensions  = (*AutoscaleEnforcer)(nil)
	_ fwk.ReservePlugin    = (*AutoscaleEnforcer)(nil)
	_ fwk.PostFilterPlugin = (*AutoscaleEnforcer)(nil)
)

// New builds the plugin: reads its config (the profile's args if given,
// else the file at config.DefaultPath), starts the permit API and metrics,
// lists and watches the cluster, and returns once startup is complete (or
// fails if that takes longer than startupEventHandlingTimeoutSeconds).
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	// The plugin logs through slog; its lines go to the scheduler's own
	// logger (klog), named as before, so operators find them where they
	// always were.
	klogger := klog.FromContext(ctx).WithName(Name)
	log := toSlog(klogger)
	cfg, err := loadConfig(obj)
	if err != nil {
		return nil, err
	}
	vc, err := newVMClient(h.KubeConfig())
	if err != nil {
		return nil, err
	}
	metrics := NewMetrics(cfg.NodeMetricLabels)
	e := NewEnforcer(cfg, log, clock.RealClock{}, vc, metrics)

	if err := ServeMetrics(ctx, cfg.MetricsAddr, metrics, e.Ready); err != nil {
		return nil, err
	}
	listening := make(chan string, 1)
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- permit.Serve(ctx, cfg.PermitAddr, &permit.Handler{Backend: e, Log: toSlog(klogger.WithName("permit")), Observe: metrics.ObservePermit}, listening)
	}()
	select {
	case addr := <-listening:
		log.Info("permit API listening", "addr", addr)
	case err := <-serveErr:
		return nil, err
	}

	if err := watchCluster(ctx, e, h.ClientSet(), vc, cfg.StartupTimeout()); err != nil {
		return nil, err
	}
	e.Start(ctx, cfg.ReconcileWorkers)
	return &AutoscaleEnforcer{e: e, cfg: cfg, log: log}, nil
}

// toSlog bridges slog to the scheduler's logr logger. The bridge goes
// through the logger's plain logr methods: klog's own slog support (its
// logr.SlogSink) drops the logger's name and values, which would lose the
// logger="AutoscaleEnforcer" and pod="…" keys of every line.
func toSlog(l logr.Logger) *slog.Logger {
	// One frame more (the bridge's) so klog's global logger, the
	// scheduler's with its default text format, names the caller's line.
	l = l.WithCallDepth(1)
	return slog.New(logr.ToSlogHandler(logr.New(plainSink{l.GetSink()})))
}

// plainSink hides every method but logr.LogSink's, so logr's slog bridge
// uses those; deriving a sink keeps it hidden.
type plainSink struct{ logr.LogSink }

func (s plainSink) WithValues(kv ...any) logr.LogSink { return plainSink{s.LogSink.WithValues(kv...)} }
func (s plainSink) WithName(name string) logr.LogSink { return plainSink{s.LogSink.WithName(name)} }

func loadConfig(obj runtime.Object) (config.Config, error) {
	u, ok := obj.(*runtime.Unknown)
	if !ok || u == nil || len(u.Raw) == 0 {
		return config.Load(config.DefaultPath)
	}
	raw := u.Raw
	if u.ContentType == runtime.ContentTypeYAML {
		var err error
		if raw, err = yaml.YAMLToJSON(raw); err != nil {
			return config.Config{}, fmt.Errorf("plugin args: %w", err)
		}
	}
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "{}" {
		return config.Load(config.DefaultPath)
	}
	return config.Parse(raw)
}

// Name is the plugin's name.
func (p *AutoscaleEnforcer) Name() string { return Name }
