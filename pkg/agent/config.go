// Package agent is the autoscaler-agent: it watches the VMs on its node,
// runs one runner per VM that scales (the pure decisions of package core,
// carried out by the plugin, monitor and VM patch executors), bills, and
// serves its metrics and a state dump.
package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vmscale/vmscale/pkg/agent/billing"
	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/agent/monitorclient"
	"github.com/vmscale/vmscale/pkg/agent/wakegrid"
	"github.com/vmscale/vmscale/pkg/api"
)

// Config is the agent's config.json (docs/protocols.md#agent-config).
type Config struct {
	// RefereshStateIntervalSeconds keeps Neon's spelling; the correct one
	// is accepted too (docs/design.md#where-vmscale-differs-and-why).
	RefereshStateIntervalSeconds *uint `json:"refereshStateIntervalSeconds,omitempty"`
	RefreshStateIntervalSeconds  *uint `json:"refreshStateIntervalSeconds,omitempty"`

	Scaling       ScalingConfig        `json:"scaling"`
	Monitor       MonitorConfig        `json:"monitor"`
	Metrics       MetricsConfig        `json:"metrics"`
	Scheduler     SchedulerConfig      `json:"scheduler"`
	NeonVM        NeonVMConfig         `json:"neonvm"`
	DumpState     *DumpStateConfig     `json:"dumpState,omitempty"`
	Billing       *billing.Config      `json:"billing,omitempty"`
	ScalingEvents *ScalingEventsConfig `json:"scalingEvents,omitempty"`
}

// ScalingConfig is "scaling".
type ScalingConfig struct {
	ComputeUnit api.Resources `json:"computeUnit"`
	// DefaultConfig is "scaling.defaultConfig": every key is required.
	DefaultConfig api.ScalingConfig `json:"defaultConfig"`
}

// FailedRequestRate flags a VM as stuck in metrics.
type FailedRequestRate struct {
	IntervalSeconds uint `json:"intervalSeconds"`
	Threshold       uint `json:"threshold"`
}

// MonitorConfig is "monitor".
type MonitorConfig struct {
	ServerPort                              uint16            `json:"serverPort"`
	ResponseTimeoutSeconds                  uint              `json:"responseTimeoutSeconds"`
	ConnectionTimeoutSeconds                uint              `json:"connectionTimeoutSeconds"`
	ConnectionRetryMinWaitSeconds           uint              `json:"connectionRetryMinWaitSeconds"`
	UnhealthyAfterSilenceDurationSeconds    uint              `json:"unhealthyAfterSilenceDurationSeconds"`
	UnhealthyStartupGracePeriodSeconds      uint              `json:"unhealthyStartupGracePeriodSeconds"`
	MaxHealthCheckSequentialFailuresSeconds uint              `json:"maxHealthCheckSequentialFailuresSeconds"`
	RetryDeniedDownscaleSeconds             uint              `json:"retryDeniedDownscaleSeconds"`
	RequestedUpscaleValidSeconds            uint              `json:"requestedUpscaleValidSeconds"`
	RetryFailedRequestSeconds               uint              `json:"retryFailedRequestSeconds"`
	MaxFailedRequestRate                    FailedRequestRate `json:"maxFailedRequestRate"`
}

// MetricsConfig is "metrics".
type MetricsConfig struct {
	System MetricsSourceConfig `json:"system"`
	LFC    MetricsSourceConfig `json:"lfc"`
}

// MetricsSourceConfig is one scraped endpoint.
type MetricsSourceConfig struct {
	Port                   uint16 `json:"port"`
	RequestTimeoutSeconds  uint   `json:"requestTimeoutSeconds"`
	SecondsBetweenRequests uint   `json:"secondsBetweenRequests"`
}

// SchedulerConfig is "scheduler".
type SchedulerConfig struct {
	SchedulerName              string            `json:"schedulerName"`
	RequestTimeoutSeconds      uint              `json:"requestTimeoutSeconds"`
	RequestAtLeastEverySeconds uint              `json:"requestAtLeastEverySeconds"`
	RetryFailedRequestSeconds  uint              `json:"retryFailedRequestSeconds"`
	RetryDeniedUpscaleSeconds  uint              `json:"retryDeniedUpscaleSeconds"`
	RequestPort                uint16            `json:"requestPort"`
	MaxFailedRequestRate       FailedRequestRate `json:"maxFailedRequestRate"`
}

// NeonVMConfig is "neonvm".
type NeonVMConfig struct {
	RequestTimeoutSeconds     uint              `json:"requestTimeoutSeconds"`
	RetryFailedRequestSeconds uint              `json:"retryFailedRequestSeconds"`
	MaxFailedRequestRate      FailedRequestRate `json:"maxFailedRequestRate"`
}

// DumpStateConfig is "dumpState".
type DumpStateConfig struct {
	Port           uint16 `json:"port"`
	TimeoutSeconds uint   `json:"timeoutSeconds"`
}

// ScalingEventsConfig is "scalingEvents". vmscale reads it so Neon's
// config files load; its s3/azureBlob reporters are not built yet, so
// clients must be empty.
type ScalingEventsConfig struct {
	CUMultiplier      float64         `json:"cuMultiplier"`
	RereportThreshold float64         `json:"rereportThreshold"`
	RegionName        string          `json:"regionName"`
	Clients           json.RawMessage `json:"clients,omitempty"`
}

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	c, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes strictly (unknown keys are errors) and validates.
func ParseConfig(raw []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: trailing data after the config object")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every key; the error names each bad one.
func (c *Config) Validate() error {
	var errs []string
	bad := func(key, why string) { errs = append(errs, key+" "+why) }
	nonZero := func(key string, v uint) {
		if v == 0 {
			bad(key, "must be set to a non-zero value")
		}
	}
	if c.RefereshStateIntervalSeconds == nil && c.RefreshStateIntervalSeconds == nil {
		bad("refereshStateIntervalSeconds", "is required")
	} else if c.refreshInterval() == 0 {
		bad("refereshStateIntervalSeconds", "must be set to a non-zero value")
	}
	if c.Scaling.ComputeUnit.HasZero() {
		bad("scaling.computeUnit", "must have non-zero vCPUs and mem")
	}
	d := c.Scaling.DefaultConfig
	for _, key := range d.Missing() {
		bad("scaling.defaultConfig."+key, "is required")
	}
	if len(errs) == 0 {
		if err := d.Validate(); err != nil {
			bad("scaling.defaultConfig:", err.Error())
		}
	}
	m := c.Monitor
	nonZero("monitor.serverPort", uint(m.ServerPort))
	nonZero("monitor.responseTimeoutSeconds", m.ResponseTimeoutSeconds)
	nonZero("monitor.connectionTimeoutSeconds", m.ConnectionTimeoutSeconds)
	nonZero("monitor.connectionRetryMinWaitSeconds", m.ConnectionRetryMinWaitSeconds)
	nonZero("monitor.unhealthyAfterSilenceDurationSeconds", m.UnhealthyAfterSilenceDurationSeconds)
	nonZero("monitor.unhealthyStartupGracePeriodSeconds", m.UnhealthyStartupGracePeriodSeconds)
	nonZero("monitor.maxHealthCheckSequentialFailuresSeconds", m.MaxHealthCheckSequentialFailuresSeconds)
	nonZero("monitor.retryDeniedDownscaleSeconds", m.RetryDeniedDownscaleSeconds)
	nonZero("monitor.requestedUpscaleValidSeconds", m.RequestedUpscaleValidSeconds)
	nonZero("monitor.retryFailedRequestSeconds", m.RetryFailedRequestSeconds)
	for name, s := range map[string]MetricsSourceConfig{"metrics.system": c.Metrics.System, "metrics.lfc": c.Metrics.LFC} {
		nonZero(name+".port", uint(s.Port))
		nonZero(name+".requestTimeoutSeconds", s.RequestTimeoutSeconds)
		nonZero(name+".secondsBetweenRequests", s.SecondsBetweenRequests)
	}
	s := c.Scheduler
	if s.SchedulerName == "" {
		bad("scheduler.schedulerName", "is required")
	}
	nonZero("scheduler.requestTimeoutSeconds", s.RequestTimeoutSeconds)
	nonZero("scheduler.requestAtLeastEverySeconds", s.RequestAtLeastEverySeconds)
	nonZero("scheduler.retryFailedRequestSeconds", s.RetryFailedRequestSeconds)
	nonZero("scheduler.retryDeniedUpscaleSeconds", s.RetryDeniedUpscaleSeconds)
	nonZero("scheduler.requestPort", uint(s.RequestPort))
	nonZero("neonvm.requestTimeoutSeconds", c.NeonVM.RequestTimeoutSeconds)
	nonZero("neonvm.retryFailedRequestSeconds", c.NeonVM.RetryFailedRequestSeconds)
	if c.DumpState != nil {
		nonZero("dumpState.port", uint(c.DumpState.Port))
		nonZero("dumpState.timeoutSeconds", c.DumpState.TimeoutSeconds)
	}
	if c.Billing != nil {
		if err := c.Billing.Validate(); err != nil {
			bad("billing:", err.Error())
		}
	}
	if e := c.ScalingEvents; e != nil && len(e.Clients) > 0 && string(bytes.TrimSpace(e.Clients)) != "{}" && string(bytes.TrimSpace(e.Clients)) != "null" {
		bad("scalingEvents.clients", "are not supported by vmscale yet (leave them empty)")
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid config: %s", strings.Join(errs, "; "))
	}
	return nil
}

func (c *Config) refreshInterval() uint {
	if c.RefreshStateIntervalSeconds != nil {
		return *c.RefreshStateIntervalSeconds
	}
	if c.RefereshStateIntervalSeconds != nil {
		return *c.RefereshStateIntervalSeconds
	}
	return 0
}

// DefaultScaling is the validated scaling defaults for the core.
func (c *Config) DefaultScaling() api.ScalingConfig {
	return c.Scaling.DefaultConfig
}

func secs(n uint) time.Duration { return time.Duration(n) * time.Second }

// Core is the state machine's config.
func (c *Config) Core() core.Config {
	cc := core.DefaultConfig(c.Scaling.ComputeUnit)
	cc.PluginRequestTick = secs(c.Scheduler.RequestAtLeastEverySeconds)
	cc.PluginRetryWait = secs(c.Scheduler.RetryFailedRequestSeconds)
	cc.PluginDeniedRetryWait = secs(c.Scheduler.RetryDeniedUpscaleSeconds)
	cc.MonitorDeniedDownscaleCooldown = secs(c.Monitor.RetryDeniedDownscaleSeconds)
	cc.MonitorRequestedUpscaleValid = secs(c.Monitor.RequestedUpscaleValidSeconds)
	cc.MonitorRetryWait = secs(c.Monitor.RetryFailedRequestSeconds)
	cc.NeonVMRetryWait = secs(c.NeonVM.RetryFailedRequestSeconds)
	return cc
}

// MonitorClient is the monitor connection's timing.
func (c *Config) MonitorClient() monitorclient.Config {
	return monitorclient.Config{
		ConnectTimeout:      secs(c.Monitor.ConnectionTimeoutSeconds),
		RetryMinWait:        secs(c.Monitor.ConnectionRetryMinWaitSeconds),
		HealthCheckEvery:    5 * time.Second,
		MaxHealthCheckFails: secs(c.Monitor.MaxHealthCheckSequentialFailuresSeconds),
		Grid:                wakegrid.Periodic,
	}
}
