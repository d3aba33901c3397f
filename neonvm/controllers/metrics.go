package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// Metrics are what an operator watches of the VM controller, all named
// vmscale_neonvm_*.
type Metrics struct {
	reconcile *prometheus.HistogramVec
	qmpCalls  *prometheus.HistogramVec
	qmpErrors *prometheus.CounterVec
	scaling   *prometheus.HistogramVec
	phases    *phaseCollector

	migrations        *prometheus.CounterVec
	migrationDuration prometheus.Histogram
	migrationDowntime prometheus.Histogram
}

// NewMetrics registers the controller's metrics with reg; vms lists the VMs
// for the per-phase gauge (the manager's cached client).
func NewMetrics(reg prometheus.Registerer, vms client.Reader) *Metrics {
	m := &Metrics{
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vmscale_neonvm_reconcile_duration_seconds", Help: "Time of one VirtualMachine reconcile, by outcome (ok, error, conflict).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"outcome"}),
		qmpCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vmscale_neonvm_qmp_call_duration_seconds", Help: "Latency of QMP calls to runner QEMUs, by command.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"command"}),
		qmpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_neonvm_qmp_errors_total", Help: "Failed QMP calls to runner QEMUs, by command.",
		}, []string{"command"}),
		scaling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vmscale_neonvm_scaling_duration_seconds", Help: "From the controller seeing a VM's spec differ from its status to the status showing the spec.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 12),
		}, []string{"mode"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_neonvm_migrations_total", Help: "Finished live migrations by outcome (succeeded, failed, cancelled).",
		}, []string{"outcome"}),
		migrationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vmscale_neonvm_migration_duration_seconds", Help: "QEMU's total time of successful live migrations.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 12),
		}),
		migrationDowntime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vmscale_neonvm_migration_downtime_seconds", Help: "QEMU's downtime (guest paused) of successful live migrations.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		phases: &phaseCollector{vms: vms, desc: prometheus.NewDesc("vmscale_neonvm_vms", "VirtualMachines by phase.", []string{"phase"}, nil)},
	}
	if reg != nil {
		reg.MustRegister(m.reconcile, m.qmpCalls, m.qmpErrors, m.scaling, m.migrations, m.migrationDuration, m.migrationDowntime)
		if vms != nil {
			reg.MustRegister(m.phases)
		}
	}
	return m
}

func (m *Metrics) observeQMP(command string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.qmpCalls.WithLabelValues(command).Observe(time.Since(start).Seconds())
	if err != nil {
		m.qmpErrors.WithLabelValues(command).Inc()
	}
}

func (m *Metrics) observeMigration(outcome string, total, downtime time.Duration) {
	if m == nil {
		return
	}
	m.migrations.WithLabelValues(outcome).Inc()
	if outcome == "succeeded" {
		m.migrationDuration.Observe(total.Seconds())
		m.migrationDowntime.Observe(downtime.Seconds())
	}
}

func (m *Metrics) observeReconcile(outcome string, d time.Duration) {
	if m != nil {
		m.reconcile.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

func (m *Metrics) observeScaling(mode vmv1.CPUScalingMode, d time.Duration) {
	if m != nil {
		m.scaling.WithLabelValues(string(mode)).Observe(d.Seconds())
	}
}

// phaseCollector counts VMs per phase at scrape time from the cache, so the
// gauge is never stale after a controller restart or a deleted VM.
type phaseCollector struct {
	vms  client.Reader
	desc *prometheus.Desc
}

func (c *phaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *phaseCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list vmv1.VirtualMachineList
	if err := c.vms.List(ctx, &list); err != nil {
		return
	}
	counts := map[vmv1.VmPhase]int{}
	for _, p := range []vmv1.VmPhase{"", vmv1.VmPending, vmv1.VmRunning, vmv1.VmScaling, vmv1.VmPreMigrating, vmv1.VmMigrating, vmv1.VmSucceeded, vmv1.VmFailed} {
		counts[p] = 0
	}
	for i := range list.Items {
		counts[list.Items[i].Status.Phase]++
	}
	for p, n := range counts {
		name := string(p)
		if name == "" {
			name = "New"
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), name)
	}
}
