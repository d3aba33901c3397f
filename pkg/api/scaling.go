package api

import (
	"errors"
	"fmt"
	"strings"
)

// ScalingConfig tunes how the agent computes a VM's goal. The same type is
// the agent config file's scaling.defaultConfig (where every field is
// required), a VM's autoscaling.neon.tech/config annotation (where each
// field present overrides the default) and what the agent's state machine
// reads (the defaults with the VM's overrides, every field set). Fields are
// pointers so a decoded value says which keys were present; the name shows
// in JSON type errors, as in Neon's.
type ScalingConfig struct {
	LoadAverageFractionTarget        *float64 `json:"loadAverageFractionTarget,omitempty"`
	MemoryUsageFractionTarget        *float64 `json:"memoryUsageFractionTarget,omitempty"`
	MemoryTotalFractionTarget        *float64 `json:"memoryTotalFractionTarget,omitempty"`
	EnableLFCMetrics                 *bool    `json:"enableLFCMetrics,omitempty"`
	LFCUseLargestWindow              *bool    `json:"lfcUseLargestWindow,omitempty"`
	LFCToMemoryRatio                 *float64 `json:"lfcToMemoryRatio,omitempty"`
	LFCWindowSizeMinutes             *int     `json:"lfcWindowSizeMinutes,omitempty"`
	LFCMinWaitBeforeDownscaleMinutes *int     `json:"lfcMinWaitBeforeDownscaleMinutes,omitempty"`
	CPUStableZoneRatio               *float64 `json:"cpuStableZoneRatio,omitempty"`
	CPUMixedZoneRatio                *float64 `json:"cpuMixedZoneRatio,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// DefaultScalingConfig is the protocol's default, the shipped agent
// config's scaling.defaultConfig (docs/protocols.md#agent-config).
func DefaultScalingConfig() ScalingConfig {
	return ScalingConfig{
		LoadAverageFractionTarget:        ptr(0.9),
		MemoryUsageFractionTarget:        ptr(0.75),
		MemoryTotalFractionTarget:        ptr(0.9),
		EnableLFCMetrics:                 ptr(false),
		LFCUseLargestWindow:              ptr(false),
		LFCToMemoryRatio:                 ptr(0.75),
		LFCWindowSizeMinutes:             ptr(5),
		LFCMinWaitBeforeDownscaleMinutes: ptr(5),
		CPUStableZoneRatio:               ptr(0.0),
		CPUMixedZoneRatio:                ptr(0.0),
	}
}

// Missing names, in declaration order, the JSON keys of the fields not
// set; defaults must have none.
func (c ScalingConfig) Missing() []string {
	var out []string
	for _, f := range []struct {
		key string
		set bool
	}{
		{"loadAverageFractionTarget", c.LoadAverageFractionTarget != nil},
		{"memoryUsageFractionTarget", c.MemoryUsageFractionTarget != nil},
		{"memoryTotalFractionTarget", c.MemoryTotalFractionTarget != nil},
		{"enableLFCMetrics", c.EnableLFCMetrics != nil},
		{"lfcUseLargestWindow", c.LFCUseLargestWindow != nil},
		{"lfcToMemoryRatio", c.LFCToMemoryRatio != nil},
		{"lfcWindowSizeMinutes", c.LFCWindowSizeMinutes != nil},
		{"lfcMinWaitBeforeDownscaleMinutes", c.LFCMinWaitBeforeDownscaleMinutes != nil},
		{"cpuStableZoneRatio", c.CPUStableZoneRatio != nil},
		{"cpuMixedZoneRatio", c.CPUMixedZoneRatio != nil},
	} {
		if !f.set {
			out = append(out, f.key)
		}
	}
	return out
}

// WithOverrides returns c with the fields set in o replacing its own. The
// result shares no pointers with o, so neither can change the other.
func (c ScalingConfig) WithOverrides(o ScalingConfig) ScalingConfig {
	over := func(dst **float64, src *float64) {
		if src != nil {
			*dst = ptr(*src)
		}
	}
	over(&c.LoadAverageFractionTarget, o.LoadAverageFractionTarget)
	over(&c.MemoryUsageFractionTarget, o.MemoryUsageFractionTarget)
	over(&c.MemoryTotalFractionTarget, o.MemoryTotalFractionTarget)
	over(&c.LFCToMemoryRatio, o.LFCToMemoryRatio)
	over(&c.CPUStableZoneRatio, o.CPUStableZoneRatio)
	over(&c.CPUMixedZoneRatio, o.CPUMixedZoneRatio)
	if o.EnableLFCMetrics != nil {
		c.EnableLFCMetrics = ptr(*o.EnableLFCMetrics)
	}
	if o.LFCUseLargestWindow != nil {
		c.LFCUseLargestWindow = ptr(*o.LFCUseLargestWindow)
	}
	if o.LFCMinWaitBeforeDownscaleMinutes != nil {
		c.LFCMinWaitBeforeDownscaleMinutes = ptr(*o.LFCMinWaitBeforeDownscaleMinutes)
	}
	if o.LFCWindowSizeMinutes != nil {
		c.LFCWindowSizeMinutes = ptr(*o.LFCWindowSizeMinutes)
	}
	return c
}

// Validate checks the fields that are set. Problems are joined with " : ",
// as Neon's are, so operators see the same messages.
func (c ScalingConfig) Validate() error {
	var errs []string
	frac := func(name string, v *float64, upper float64) {
		if v == nil {
			return
		}
		if *v < 0 {
			errs = append(errs, fmt.Sprintf(".%s must be set to value >= 0", name))
		} else if *v >= upper {
			errs = append(errs, fmt.Sprintf(".%s must be set to value < %g", name, upper))
		}
	}
	frac("loadAverageFractionTarget", c.LoadAverageFractionTarget, 2)
	frac("memoryUsageFractionTarget", c.MemoryUsageFractionTarget, 1)
	frac("memoryTotalFractionTarget", c.MemoryTotalFractionTarget, 1)
	if v := c.LFCToMemoryRatio; v != nil && (*v <= 0 || *v > 1) {
		errs = append(errs, ".lfcToMemoryRatio must be set to value in (0, 1]")
	}
	if v := c.LFCWindowSizeMinutes; v != nil && *v < 2 {
		errs = append(errs, ".lfcWindowSizeMinutes must be set to value >= 2")
	}
	if w, m := c.LFCWindowSizeMinutes, c.LFCMinWaitBeforeDownscaleMinutes; w != nil && m != nil && *m < *w {
		errs = append(errs, ".lfcMinWaitBeforeDownscaleMinutes must be set to value >= .lfcWindowSizeMinutes")
	}
	for _, r := range []struct {
		name string
		v    *float64
	}{{"cpuStableZoneRatio", c.CPUStableZoneRatio}, {"cpuMixedZoneRatio", c.CPUMixedZoneRatio}} {
		if r.v != nil && *r.v < 0 {
			errs = append(errs, fmt.Sprintf(".%s must be set to value >= 0", r.name))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, " : "))
	}
	return nil
}
