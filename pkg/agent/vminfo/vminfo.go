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
func Extract(vm *vmv1.VirtualMachine, defaults api.ScalingConfig) (core.VMInfo, error) {
	info, err := extract(vm, defaults)
	if err != nil {
		return info, fmt.Errorf("error extracting VM info: %w", err)
	}
	return info, nil
}

func extract(vm *vmv1.VirtualMachine, defaults api.ScalingConfig) (core.VMInfo, error) {
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
	if raw, ok := vm.Annotations[api.BoundsAnnotation]; ok {
		var b Bounds
		if err := json.Unmarshal([]byte(raw), &b); err != nil {
			return info, fmt.Errorf("error unmarshaling annotation %q: %w", api.BoundsAnnotation, err)
		}
		if err := b.validate(g.MemorySlotSize); err != nil {
			return info, fmt.Errorf("bad scaling bounds in annotation %q: %w", api.BoundsAnnotation, err)
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
	if raw, ok := vm.Annotations[api.ConfigAnnotation]; ok {
		var c api.ScalingConfig
		if err := json.Unmarshal([]byte(raw), &c); err != nil {
			return info, fmt.Errorf("error unmarshaling annotation %q: %w", api.ConfigAnnotation, err)
		}
		if err := c.Validate(); err != nil {
			return info, fmt.Errorf("bad scaling config in annotation %q: %w", api.ConfigAnnotation, err)
		}
		info.Scaling = defaults.WithOverrides(c)
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
	return vm.Status.Node == node && vm.Status.PodIP != "" && vm.Labels[api.EnabledLabel] == "true" &&
		vm.Spec.SchedulerName == schedulerName
}
