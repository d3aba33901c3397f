package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// Metrics are the plugin's Prometheus metrics, in a registry of their own
// (the scheduler's registry is served behind its authenticated port).
type Metrics struct {
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	patches         *prometheus.CounterVec
	patchDuration   *prometheus.HistogramVec
	migrations      *prometheus.CounterVec
	migrationsDone  prometheus.Counter
	overBudget      prometheus.Counter
	unschedulable   prometheus.Counter

	nodeLabels map[string]string // metric label → node label
	enforcer   *Enforcer
}

// NewMetrics registers the plugin's metrics. nodeLabels adds node labels to
// the per-node series (metric label name → node label key).
func NewMetrics(nodeLabels map[string]string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_plugin_permit_requests_total",
			Help: "Agent permit requests answered, by outcome (ok, bad_request, not_found, error).",
		}, []string{"outcome"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmscale_plugin_permit_request_duration_seconds",
			Help:    "Time to answer an agent permit request, by outcome.",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2},
		}, []string{"outcome"}),
		patches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_plugin_vm_patches_total",
			Help: "JSON patches of VirtualMachines, by kind (request, approval) and result (ok, error).",
		}, []string{"kind", "result"}),
		patchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmscale_plugin_vm_patch_duration_seconds",
			Help:    "Time of one VirtualMachine patch, by kind.",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1},
		}, []string{"kind"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_plugin_migrations_created_total",
			Help: "VirtualMachineMigrations created to move VMs off nodes past their watermark, by source node.",
		}, []string{"node"}),
		migrationsDone: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_plugin_migrations_deleted_total",
			Help: "Finished VirtualMachineMigrations the plugin created and then deleted.",
		}),
		overBudget: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_plugin_reserve_over_budget_total",
			Help: "Pods reserved on a node that was then over budget (the scheduler's Reserve cannot be refused).",
		}),
		unschedulable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_plugin_unschedulable_pods_total",
			Help: "Scheduling attempts where no node had room (PostFilter).",
		}),
		nodeLabels: nodeLabels,
	}
	reg.MustRegister(m.requests, m.requestDuration, m.patches, m.patchDuration, m.migrations, m.migrationsDone,
		m.overBudget, m.unschedulable, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) watch(e *Enforcer) {
	m.enforcer = e
	m.Registry.MustRegister(&nodeCollector{m: m})
}

// ObservePermit records one answered permit request.
func (m *Metrics) ObservePermit(outcome permit.Outcome, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(string(outcome)).Inc()
	m.requestDuration.WithLabelValues(string(outcome)).Observe(elapsed.Seconds())
}

func (m *Metrics) observePatch(kind string, err error, elapsed time.Duration) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.patches.WithLabelValues(kind, result).Inc()
	m.patchDuration.WithLabelValues(kind).Observe(elapsed.Seconds())
}

func (m *Metrics) observeRequestPatch(err error, d time.Duration) { m.observePatch("request", err, d) }
func (m *Metrics) observeApproval(err error, d time.Duration)     { m.observePatch("approval", err, d) }

func (m *Metrics) migrationCreated(node string) {
	if m != nil {
		m.migrations.WithLabelValues(node).Inc()
	}
}

func (m *Metrics) migrationDeleted() {
	if m != nil {
		m.migrationsDone.Inc()
	}
}

func (m *Metrics) reserveOverBudget() {
	if m != nil {
		m.overBudget.Inc()
	}
}

func (m *Metrics) podUnschedulable() {
	if m != nil {
		m.unschedulable.Inc()
	}
}

// nodeCollector reads each node's accounting at scrape time, so a deleted
// node's series disappear with it.
type nodeCollector struct{ m *Metrics }

var nodeMetricNames = []struct{ name, help string }{
	{"vmscale_plugin_node_total", "A node's allocatable amount, by resource (cpu in vCPUs, memory in bytes)."},
	{"vmscale_plugin_node_reserved", "What pods hold on a node after overcommit, by resource."},
	{"vmscale_plugin_node_watermark", "The amount past which pods are migrated off a node, by resource."},
	{"vmscale_plugin_node_migrating", "What pods being migrated off a node hold, by resource."},
}

func (c *nodeCollector) labels() []string {
	keys := make([]string, 0, len(c.m.nodeLabels))
	for k := range c.m.nodeLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return append([]string{"node", "resource"}, keys...)
}

func (c *nodeCollector) descs() []*prometheus.Desc {
	out := make([]*prometheus.Desc, len(nodeMetricNames))
	for i, n := range nodeMetricNames {
		out[i] = prometheus.NewDesc(n.name, n.help, c.labels(), nil)
	}
	return out
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	e := c.m.enforcer
	descs := c.descs()
	labelKeys := c.labels()[2:]
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.Nodes(func(n *state.Node) {
		extra := make([]string, len(labelKeys))
		nodeLabels := e.nodeLabels[n.Name]
		for i, k := range labelKeys {
			extra[i] = nodeLabels[c.m.nodeLabels[k]]
		}
		for _, r := range []struct {
			name  string
			res   state.Resource
			scale float64
		}{{"cpu", n.CPU, 1000}, {"memory", n.Mem, 1}} {
			lv := append([]string{n.Name, r.name}, extra...)
			for i, v := range []uint64{r.res.Total, r.res.Reserved, r.res.Watermark, r.res.Migrating} {
				ch <- prometheus.MustNewConstMetric(descs[i], prometheus.GaugeValue, float64(v)/r.scale, lv...)
			}
		}
	})
}

// ServeMetrics serves /metrics, and /readyz (200 once startup is complete),
// on addr until ctx ends; "0" serves nothing.
func ServeMetrics(ctx context.Context, addr string, m *Metrics, ready func() bool) error {
	if addr == "0" || addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "starting up", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.enforcer.log.Error("metrics server stopped", "err", err)
		}
	}()
	return nil
}
