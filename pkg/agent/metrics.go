package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics, vmscale_agent_*.
type Metrics struct {
	Runners         prometheus.Gauge
	MonitorsUp      prometheus.Gauge
	Requests        *prometheus.CounterVec
	RequestDuration *prometheus.HistogramVec
	Scrapes         *prometheus.CounterVec
	ScrapeDuration  *prometheus.HistogramVec
	// ScalingPhase is the end-to-end scaling latency: from the decision to
	// each phase (permit, vm_patch, status, monitor; for downscales monitor
	// first and plugin last).
	ScalingPhase *prometheus.HistogramVec
	BadVMs       prometheus.Counter
	// StuckVMs are VMs whose requests to a peer fail more often than its
	// maxFailedRequestRate allows.
	StuckVMs      *prometheus.GaugeVec
	BillingPushes *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Runners: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vmscale_agent_runners",
			Help: "VMs this agent is scaling."}),
		MonitorsUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vmscale_agent_monitor_connections",
			Help: "VMs whose vm-monitor is connected."}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vmscale_agent_requests_total",
			Help: "Requests to the scheduler plugin, the apiserver (VM patches) and the vm-monitor, by outcome."},
			[]string{"peer", "outcome"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vmscale_agent_request_duration_seconds",
			Help: "Time each request took.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{"peer"}),
		Scrapes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vmscale_agent_scrapes_total",
			Help: "Metrics scrapes of VMs, by source and outcome."}, []string{"source", "outcome"}),
		ScrapeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vmscale_agent_scrape_duration_seconds",
			Help: "Time a scrape took, fetch and parse.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"source"}),
		ScalingPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vmscale_agent_scaling_phase_seconds",
			Help:    "End-to-end scaling latency: time from the decision to scale to each phase being done.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"direction", "phase"}),
		BadVMs: prometheus.NewCounter(prometheus.CounterOpts{Name: "vmscale_agent_vm_info_errors_total",
			Help: "VM objects that could not be read (bad bounds or config annotations)."}),
		StuckVMs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vmscale_agent_stuck_vms",
			Help: "VMs whose requests to a peer (plugin, neonvm, monitor) failed more than maxFailedRequestRate allows."}, []string{"peer"}),
		BillingPushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vmscale_agent_billing_pushes_total",
			Help: "Billing event pushes, by outcome."}, []string{"outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.Runners, m.MonitorsUp, m.Requests, m.RequestDuration, m.Scrapes, m.ScrapeDuration, m.ScalingPhase, m.BadVMs, m.StuckVMs, m.BillingPushes)
	}
	return m
}

func (m *Metrics) request(peer string, err error, d time.Duration) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.Requests.WithLabelValues(peer, outcome).Inc()
	m.RequestDuration.WithLabelValues(peer).Observe(d.Seconds())
}
