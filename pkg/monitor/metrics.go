package monitor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is what an operator watches on a vm-monitor.
type Metrics struct {
	AgentConnected        prometheus.Gauge
	AgentConnections      prometheus.Counter
	Handshakes            *prometheus.CounterVec // result: ok, version_mismatch, invalid, timeout
	MessagesReceived      *prometheus.CounterVec // type
	MessagesSent          *prometheus.CounterVec // type
	Upscales              *prometheus.CounterVec // result: ok, failed
	Downscales            *prometheus.CounterVec // result: approved, denied, failed
	UpscaleRequestLatency prometheus.Histogram
	MemoryNonReclaimable  prometheus.Gauge
	MemoryThreshold       prometheus.Gauge
	CgroupReadErrors      prometheus.Counter
	FileCacheSize         prometheus.Gauge
	FileCacheErrors       prometheus.Counter
}

// NewMetrics makes the metrics and registers them with reg (when not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		AgentConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmscale_monitor_agent_connected",
			Help: "1 while an autoscaler-agent is connected and past the handshake.",
		}),
		AgentConnections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_monitor_agent_connections_total",
			Help: "Websocket connections accepted on /monitor.",
		}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_monitor_handshakes_total",
			Help: "Protocol handshakes by result (ok, version_mismatch, invalid, timeout).",
		}, []string{"result"}),
		MessagesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_monitor_messages_received_total",
			Help: "Messages received from the agent by type (\"unparsable\" when undecodable).",
		}, []string{"type"}),
		MessagesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_monitor_messages_sent_total",
			Help: "Messages sent to the agent by type.",
		}, []string{"type"}),
		Upscales: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_monitor_upscales_total",
			Help: "Upscale notifications handled, by result (ok, failed).",
		}, []string{"result"}),
		Downscales: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_monitor_downscales_total",
			Help: "Downscale requests by result (approved, denied, failed).",
		}, []string{"result"}),
		UpscaleRequestLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmscale_monitor_upscale_request_latency_seconds",
			Help:    "From the first memory sample at the threshold to the UpscaleRequest written to the socket.",
			Buckets: []float64{0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5},
		}),
		MemoryNonReclaimable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmscale_monitor_cgroup_memory_non_reclaimable_bytes",
			Help: "Average anonymous memory of the watched cgroup over the last samples.",
		}),
		MemoryThreshold: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmscale_monitor_cgroup_memory_threshold_bytes",
			Help: "Memory use at which the monitor asks for an upscale (0: none yet).",
		}),
		CgroupReadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_monitor_cgroup_read_errors_total",
			Help: "Failed reads of the cgroup's memory.stat.",
		}),
		FileCacheSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmscale_monitor_file_cache_size_bytes",
			Help: "Cache size last applied to Postgres.",
		}),
		FileCacheErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmscale_monitor_file_cache_errors_total",
			Help: "Failed attempts to size Postgres's cache.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.AgentConnected, m.AgentConnections, m.Handshakes, m.MessagesReceived,
			m.MessagesSent, m.Upscales, m.Downscales, m.UpscaleRequestLatency, m.MemoryNonReclaimable,
			m.MemoryThreshold, m.CgroupReadErrors, m.FileCacheSize, m.FileCacheErrors)
	}
	return m
}
