// Package config reads and validates the AutoscaleEnforcer plugin's
// configuration: the JSON file Neon's plugin reads
// (/etc/scheduler-plugin-config/autoscale-enforcer-config.json), with the
// same keys, or the same object given inline as the plugin's args in the
// KubeSchedulerConfiguration.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// DefaultPath is where the deployment mounts the config file.
const DefaultPath = "/etc/scheduler-plugin-config/autoscale-enforcer-config.json"

// Config is the plugin's configuration. Keys are Neon's, plus two listen
// addresses vmscale adds (so tests and side-by-side schedulers can move the
// ports).
type Config struct {
	Watermark                         float64           `json:"watermark"`
	Scoring                           Scoring           `json:"scoring"`
	SchedulerName                     string            `json:"schedulerName"`
	ReconcileWorkers                  int               `json:"reconcileWorkers"`
	LogSuccessiveFailuresThreshold    int               `json:"logSuccessiveFailuresThreshold"`
	StartupEventHandlingTimeoutSecond int               `json:"startupEventHandlingTimeoutSeconds"`
	PatchRetryWaitSeconds             int               `json:"patchRetryWaitSeconds"`
	K8sCRUDTimeoutSeconds             int               `json:"k8sCRUDTimeoutSeconds"`
	NodeMetricLabels                  map[string]string `json:"nodeMetricLabels"`
	IgnoredNamespaces                 []string          `json:"ignoredNamespaces"`

	// PermitAddr is where the agents' permit API listens (default
	// ":10299"); MetricsAddr is where Prometheus scrapes (default ":9100",
	// "0" turns it off).
	PermitAddr  string `json:"permitAddr,omitempty"`
	MetricsAddr string `json:"metricsAddr,omitempty"`
}

// Scoring shapes Score; see state.ScoringConfig.
type Scoring struct {
	MinUsageScore float64 `json:"minUsageScore"`
	MaxUsageScore float64 `json:"maxUsageScore"`
	ScorePeak     float64 `json:"scorePeak"`
	Randomize     bool    `json:"randomize"`
}

// Default is the deployment's config.
func Default() Config {
	return Config{
		Watermark:                         0.9,
		Scoring:                           Scoring{MinUsageScore: 0.5, MaxUsageScore: 0, ScorePeak: 0.8, Randomize: true},
		SchedulerName:                     "autoscale-scheduler",
		ReconcileWorkers:                  16,
		LogSuccessiveFailuresThreshold:    10,
		StartupEventHandlingTimeoutSecond: 15,
		PatchRetryWaitSeconds:             1,
		K8sCRUDTimeoutSeconds:             1,
		NodeMetricLabels:                  map[string]string{},
		IgnoredNamespaces:                 []string{},
		PermitAddr:                        ":10299",
		MetricsAddr:                       ":9100",
	}
}

// Parse reads a config: every key is required (as in Neon) except the two
// listen addresses, unknown keys are refused, and the values are validated.
// Errors name the offending key.
func Parse(data []byte) (Config, error) {
	var present map[string]json.RawMessage
	if err := json.Unmarshal(data, &present); err != nil {
		return Config{}, fmt.Errorf("plugin config: %w", err)
	}
	for _, key := range []string{"watermark", "scoring", "schedulerName", "reconcileWorkers",
		"logSuccessiveFailuresThreshold", "startupEventHandlingTimeoutSeconds", "patchRetryWaitSeconds",
		"k8sCRUDTimeoutSeconds", "nodeMetricLabels", "ignoredNamespaces"} {
		if _, ok := present[key]; !ok {
			return Config{}, fmt.Errorf("plugin config: %s: required key missing", key)
		}
	}
	c := Config{}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("plugin config: %w", err)
	}
	if c.PermitAddr == "" {
		c.PermitAddr = ":10299"
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = ":9100"
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("plugin config: %w", err)
	}
	return c, nil
}

// Load reads the config file at path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read plugin config: %w", err)
	}
	return Parse(data)
}

// Validate checks the ranges: watermark in (0,1], scores in [0,1], the peak
// strictly inside (0,1), everything else positive.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, rule string, v any) { errs = append(errs, fmt.Errorf("%s: must be %s, got %v", key, rule, v)) }
	if !(c.Watermark > 0 && c.Watermark <= 1) {
		bad("watermark", "in (0, 1]", c.Watermark)
	}
	if !(c.Scoring.MinUsageScore >= 0 && c.Scoring.MinUsageScore <= 1) {
		bad("scoring.minUsageScore", "in [0, 1]", c.Scoring.MinUsageScore)
	}
	if !(c.Scoring.MaxUsageScore >= 0 && c.Scoring.MaxUsageScore <= 1) {
		bad("scoring.maxUsageScore", "in [0, 1]", c.Scoring.MaxUsageScore)
	}
	if !(c.Scoring.ScorePeak > 0 && c.Scoring.ScorePeak < 1) {
		bad("scoring.scorePeak", "in (0, 1)", c.Scoring.ScorePeak)
	}
	if c.SchedulerName == "" {
		bad("schedulerName", "non-empty", `""`)
	}
	for key, v := range map[string]int{
		"reconcileWorkers":                   c.ReconcileWorkers,
		"logSuccessiveFailuresThreshold":     c.LogSuccessiveFailuresThreshold,
		"startupEventHandlingTimeoutSeconds": c.StartupEventHandlingTimeoutSecond,
		"patchRetryWaitSeconds":              c.PatchRetryWaitSeconds,
		"k8sCRUDTimeoutSeconds":              c.K8sCRUDTimeoutSeconds,
	} {
		if v <= 0 {
			bad(key, "> 0", v)
		}
	}
	for k, v := range c.NodeMetricLabels {
		if k == "" || v == "" {
			bad("nodeMetricLabels", "non-empty names and node labels", fmt.Sprintf("%q: %q", k, v))
		}
	}
	return errors.Join(errs...)
}

// State is the pure accounting's share of the config.
func (c *Config) State() state.Config {
	return state.Config{Watermark: c.Watermark, Scoring: state.ScoringConfig{
		MinUsageScore: c.Scoring.MinUsageScore, MaxUsageScore: c.Scoring.MaxUsageScore, ScorePeak: c.Scoring.ScorePeak,
	}}
}

// StartupTimeout bounds the initial list of Nodes, Pods and VMs.
func (c *Config) StartupTimeout() time.Duration {
	return time.Duration(c.StartupEventHandlingTimeoutSecond) * time.Second
}

// CRUDTimeout bounds each API call the plugin makes.
func (c *Config) CRUDTimeout() time.Duration {
	return time.Duration(c.K8sCRUDTimeoutSeconds) * time.Second
}

// PatchRetryWait is the least time between two patches of one VM after a
// failure.
func (c *Config) PatchRetryWait() time.Duration {
	return time.Duration(c.PatchRetryWaitSeconds) * time.Second
}

// Ignored reports whether pods in namespace are left alone.
func (c *Config) Ignored(namespace string) bool {
	for _, ns := range c.IgnoredNamespaces {
		if ns == namespace {
			return true
		}
	}
	return false
}
