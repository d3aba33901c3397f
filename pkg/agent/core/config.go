// Package core is the autoscaler-agent's decision logic for one VM
// (docs/protocols.md#agent-decisions): a pure state machine. The caller feeds it what it
// observed (the VM object, metrics, replies from the plugin, the monitor and
// the apiserver) and asks NextActions(now) what to do next and when to ask
// again. Nothing here blocks, starts goroutines, reads a clock or does I/O.
package core

import (
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

// Config is what the state machine needs of the agent's configuration.
type Config struct {
	// ComputeUnit is the step VMs scale by; both fields non-zero.
	ComputeUnit api.Resources

	// PluginRequestTick is how often the plugin hears from us even when
	// nothing changes (requestAtLeastEverySeconds).
	PluginRequestTick time.Duration
	// PluginRetryWait follows a failed plugin request.
	PluginRetryWait time.Duration
	// PluginDeniedRetryWait follows a request the plugin granted only in part.
	PluginDeniedRetryWait time.Duration

	// MonitorDeniedDownscaleCooldown is how long a denied downscale keeps
	// the VM at least one unit above the denied target.
	MonitorDeniedDownscaleCooldown time.Duration
	// MonitorDeniedDownscaleMaxCooldown caps the cooldown, which doubles for
	// every repeated denial of the same target (docs/design.md#where-vmscale-differs-and-why).
	MonitorDeniedDownscaleMaxCooldown time.Duration
	// MonitorRequestedUpscaleValid is how long a monitor's upscale request
	// raises the goal.
	MonitorRequestedUpscaleValid time.Duration
	// MonitorRetryWait follows a failed monitor request.
	MonitorRetryWait time.Duration

	// NeonVMRetryWait follows a failed VM patch.
	NeonVMRetryWait time.Duration
}

// DefaultConfig is Neon's defaults with the given compute unit.
func DefaultConfig(cu api.Resources) Config {
	return Config{
		ComputeUnit:                       cu,
		PluginRequestTick:                 15 * time.Second,
		PluginRetryWait:                   3 * time.Second,
		PluginDeniedRetryWait:             2 * time.Second,
		MonitorDeniedDownscaleCooldown:    5 * time.Second,
		MonitorDeniedDownscaleMaxCooldown: 60 * time.Second,
		MonitorRequestedUpscaleValid:      10 * time.Second,
		MonitorRetryWait:                  3 * time.Second,
		NeonVMRetryWait:                   5 * time.Second,
	}
}
