// Package vminfo reads what the autoscaler-agent needs from a
// VirtualMachine object: its bounds (from the spec, or the
// autoscaling.neon.tech/bounds annotation), what it uses, and its scaling
// config (the agent's defaults with the autoscaling.neon.tech/config
// overrides). Errors read like Neon's, so operators see the same messages
// (testdata/compat/vectors/vm-annotations).
package vminfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/api"
)

// Labels and annotations of the autoscaling protocol.
const (
	EnabledLabel                = "autoscaling.neon.tech/enabled"
	BoundsAnnotation            = "autoscaling.neon.tech/bounds"
	ConfigAnnotation            = "autoscaling.neon.tech/config"
	BillingEndpointIDAnnotation = "autoscaling.neon.tech/billing-endpoint-id"
)

// ScalingConfig is the per-VM override: each field present replaces the
// agent's default. The name shows in JSON type errors, as in Neon's.
type ScalingConfig struct {
	LoadAverageFractionTarget        *float64 `json:"loadAverageFractionTarget,omitempty"`
	MemoryUsageFractionTarget        *float64 `json:"memoryUsageFractionTarget,omitempty"`
	MemoryTotalFractionTarget        *float64 `json:"memoryTotalFractionTarget,omitempty"`
	EnableLFCMetrics                 *bool    `json:"enableLFCMetrics,omitempty"`
	LFCUseLargestWindow              *bool    `json:"lfcUseLargestWindow,omitempty"`
	LFCToMemoryRatio                 *float64 `json:"lfcToMemoryRatio,omitempty"`
	LFCMinWaitBeforeDownscaleMinutes *int     `json:"lfcMinWaitBeforeDownscaleMinutes,omitempty"`
	LFCWindowSizeMinutes             *int     `json:"lfcWindowSizeMinutes,omitempty"`
	CPUStableZoneRatio               *float64 `json:"cpuStableZoneRatio,omitempty"`
	CPUMixedZoneRatio                *float64 `json:"cpuMixedZoneRatio,omitempty"`
}

// Apply returns base with the fields set in c.
func (c ScalingConfig) Apply(base core.ScalingConfig) core.ScalingConfig {
	set := func(dst *float64, src *float64) {
		if src != nil {
			*dst = *src
		}
	}
	set(&base.LoadAverageFractionTarget, c.LoadAverageFractionTarget)
	set(&base.MemoryUsageFractionTarget, c.MemoryUsageFractionTarget)
	set(&base.MemoryTotalFractionTarget, c.MemoryTotalFractionTarget)
	set(&base.LFCToMemoryRatio, c.LFCToMemoryRatio)
	set(&base.CPUStableZoneRatio, c.CPUStableZoneRatio)
	set(&base.CPUMixedZoneRatio, c.CPUMixedZoneRatio)
	if c.EnableLFCMetrics != nil {
		base.EnableLFCMetrics = *c.EnableLFCMetrics
	}
	if c.LFCUseLargestWindow != nil {
		base.LFCUseLargestWindow = *c.LFCUseLargestWindow
	}
	if c.LFCMinWaitBeforeDownscaleMinutes != nil {
		base.LFCMinWaitBeforeDownscaleMinutes = *c.LFCMinWaitBeforeDownscaleMinutes
	}
	if c.LFCWindowSizeMinutes != nil {
		base.LFCWindowSizeMinutes = *c.LFCWindowSizeMinutes
	}
	return base
}

// Validate checks the fields that are set. Problems are joined with " : ",
// as Neon's are.
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

// Bounds is the bounds annotation: {"min":{"cpu":q,"mem":q},"max":{…}}.
type Bounds struct {
	Min BoundsResources `json:"min"`
	Max BoundsResources `json:"max"`
}

// BoundsResources is one side of Bounds.
type BoundsResources struct {
	CPU resource.Quantity `json:"cpu"`
	Mem resource.Quantity `json:"mem"`
}

func (b Bounds) validate(slot resource.Quantity) error {
	var errs []string
	side := func(name string, r BoundsResources) {
		if r.CPU.IsZero() {
			errs = append(errs, fmt.Sprintf("error at .%s.cpu: must be set to a non-zero value", name))
		}
		switch {
		case r.Mem.IsZero() || r.Mem.Sign() < 0:
			errs = append(errs, fmt.Sprintf("error at .%s.mem: must be set to a value greater than zero", name))
		case slot.Value() > 0 && r.Mem.Value()%slot.Value() != 0:
			errs = append(errs, fmt.Sprintf("error at .%s.mem: must be divisible by VM memory slot size %s", name, slot.String()))
		}
	}
	side("min", b.Min)
	side("max", b.Max)
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, ": "))
	}
	return nil
}

// Extract reads vm for the state machine, with defaults as its base
// scaling config.
func Extract(vm *vmv1.VirtualMachine, defaults core.ScalingConfig) (core.VMInfo, error) {
	info, err := extract(vm, defaults)
	if err != nil {
		return info, fmt.Errorf("error extracting VM info: %w", err)
	}
	return info, nil
}

func extract(vm *vmv1.VirtualMachine, defaults core.ScalingConfig) (core.VMInfo, error) {
	g := &vm.Spec.Guest
	slot, err := api.BytesFromQuantity(g.MemorySlotSize)
	if err != nil {
		return core.VMInfo{}, fmt.Errorf("memory slot size: %w", err)
	}
	info := core.VMInfo{
		Namespace: vm.Namespace, Name: vm.Name, SlotSize: slot,
		Min:     api.Resources{VCPU: g.CPUs.Min, Mem: slot * api.Bytes(g.MemorySlots.Min)},
		Max:     api.Resources{VCPU: g.CPUs.Max, Mem: slot * api.Bytes(g.MemorySlots.Max)},
		Using:   api.Resources{VCPU: g.CPUs.Use, Mem: slot * api.Bytes(g.MemorySlots.Use)},
		Scaling: defaults,
	}
	if vm.Spec.TargetRevision != nil {
		info.Revision = vm.Spec.TargetRevision.Revision.Value
	}
	if raw, ok := vm.Annotations[BoundsAnnotation]; ok {
		var b Bounds
		if err := json.Unmarshal([]byte(raw), &b); err != nil {
			return info, fmt.Errorf("error unmarshaling annotation %q: %w", BoundsAnnotation, err)
		}
		if err := b.validate(g.MemorySlotSize); err != nil {
			return info, fmt.Errorf("bad scaling bounds in annotation %q: %w", BoundsAnnotation, err)
		}
		if info.Min, err = resourcesOf(b.Min); err != nil {
			return info, err
		}
		if info.Max, err = resourcesOf(b.Max); err != nil {
			return info, err
		}
	}
	if info.Min.AnyAbove(info.Max) {
		return info, fmt.Errorf("min resources %s has field greater than maximum %s", goString(info.Min), goString(info.Max))
	}
	if raw, ok := vm.Annotations[ConfigAnnotation]; ok {
		var c ScalingConfig
		if err := json.Unmarshal([]byte(raw), &c); err != nil {
			return info, fmt.Errorf("error unmarshaling annotation %q: %w", ConfigAnnotation, err)
		}
		if err := c.Validate(); err != nil {
			return info, fmt.Errorf("bad scaling config in annotation %q: %w", ConfigAnnotation, err)
		}
		info.Scaling = c.Apply(defaults)
	}
	return info, nil
}

func resourcesOf(b BoundsResources) (api.Resources, error) {
	cpu, err := vmv1.MilliCPUFromQuantity(b.CPU)
	if err != nil {
		return api.Resources{}, err
	}
	mem, err := api.BytesFromQuantity(b.Mem)
	if err != nil {
		return api.Resources{}, err
	}
	return api.Resources{VCPU: cpu, Mem: mem}, nil
}

// goString writes r as Neon's %+v of its Resources does.
func goString(r api.Resources) string {
	return fmt.Sprintf("{VCPU:%s Mem:%s}", r.VCPU, r.Mem)
}

// Ours reports whether this node's agent scales vm: it runs on node, is
// alive and not migrating, has a pod IP, is labelled for autoscaling, and
// is scheduled by schedulerName.
func Ours(vm *vmv1.VirtualMachine, node, schedulerName string) bool {
	switch vm.Status.Phase {
	case vmv1.VmRunning, vmv1.VmScaling, vmv1.VmPreMigrating:
	default:
		return false
	}
	return vm.Status.Node == node && vm.Status.PodIP != "" && vm.Labels[EnabledLabel] == "true" &&
		vm.Spec.SchedulerName == schedulerName
}
