// Package top is what vmscale-top shows of a VirtualMachine: a Sample built
// from the VM object and the guest's load, and the text printed for it — a
// table redrawn in place on a terminal, or one line per change when the
// output is a log. It does no I/O; cmd/vmscale-top reads the cluster and the
// guest and hands the results in.
package top

import (
	"encoding/json"
	"fmt"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// Annotations the scheduler plugin writes on a VM (docs/protocols.md#annotations-and-labels).
const (
	ApprovedAnnotation  = vmpod.ApprovedAnnotation
	RequestedAnnotation = vmpod.RequestedAnnotation
)

// Sample is one look at one VM.
type Sample struct {
	At time.Time
	VM string
	// Err is why the VM could not be read; the other fields are then empty.
	Err string

	Phase string
	// CPUs is status.cpus (what the guest has), nil until reported;
	// CPUsSpec is spec.guest.cpus.use.
	CPUs     *vmv1.MilliCPU
	CPUsSpec vmv1.MilliCPU
	// Mem is status.memorySize, nil until reported; MemSpec is
	// spec.guest.memorySlots.use × spec.guest.memorySlotSize.
	Mem     *api.Bytes
	MemSpec api.Bytes

	// Load1 is host_load1 from the guest exporter; nil with LoadErr set
	// when the scrape failed, nil with LoadErr empty when there was nothing
	// to scrape (no pod IP yet).
	Load1   *float64
	LoadErr string

	// Permit is the plugin's approval (resources-approved), Requested the
	// agent's last request (resources-requested); nil when absent.
	Permit, Requested *api.Resources
	PermitErr         string

	Scaling  Scaling
	Restarts int32
	Node     string
}

// Scaling is the VM's last resource change as its revisions tell it.
type Scaling struct {
	// Known is false when no one set spec.targetRevision.
	Known bool
	// Direction is "up", "down" or "" (from the revision's flags).
	Direction string
	// Done says status.currentRevision reached the target: Took is then
	// currentRevision.updatedAt − targetRevision.updatedAt. Otherwise Took
	// is how long the target has been waiting.
	Done bool
	Took time.Duration
}

// FromVM reads vm at now.
func FromVM(vm *vmv1.VirtualMachine, now time.Time) Sample {
	g := &vm.Spec.Guest
	s := Sample{
		At: now, VM: vm.Name, Phase: string(vm.Status.Phase),
		CPUs: vm.Status.CPUs, CPUsSpec: g.CPUs.Use,
		MemSpec:  api.Bytes(max(g.MemorySlotSize.Value(), 0) * int64(max(g.MemorySlots.Use, 0))),
		Restarts: vm.Status.RestartCount, Node: vm.Status.Node,
		Scaling: scalingOf(vm.Spec.TargetRevision, vm.Status.CurrentRevision, now),
	}
	if q := vm.Status.MemorySize; q != nil {
		if b, err := api.BytesFromQuantity(*q); err == nil {
			s.Mem = &b
		}
	}
	var errs []string
	s.Permit = annotation(vm, ApprovedAnnotation, &errs)
	s.Requested = annotation(vm, RequestedAnnotation, &errs)
	if len(errs) > 0 {
		s.PermitErr = errs[0]
	}
	return s
}

// Failed is the sample of a VM that could not be read.
func Failed(name string, now time.Time, err error) Sample {
	return Sample{At: now, VM: name, Err: err.Error()}
}

// SetLoad records the result of scraping the guest's exporter.
func (s *Sample) SetLoad(load1 float64, err error) {
	if err != nil {
		s.Load1, s.LoadErr = nil, err.Error()
		return
	}
	s.Load1, s.LoadErr = &load1, ""
}

func annotation(vm *vmv1.VirtualMachine, key string, errs *[]string) *api.Resources {
	raw, ok := vm.Annotations[key]
	if !ok {
		return nil
	}
	var r api.Resources
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		*errs = append(*errs, fmt.Sprintf("annotation %s: %v", key, err))
		return nil
	}
	return &r
}

func scalingOf(target, current *vmv1.RevisionWithTime, now time.Time) Scaling {
	if target == nil {
		return Scaling{}
	}
	out := Scaling{Known: true}
	switch f := target.Revision.Flags; {
	case f&vmv1.RevisionFlagUpscale != 0 && f&vmv1.RevisionFlagDownscale == 0:
		out.Direction = "up"
	case f&vmv1.RevisionFlagDownscale != 0 && f&vmv1.RevisionFlagUpscale == 0:
		out.Direction = "down"
	}
	if current != nil && current.Revision.Value == target.Revision.Value {
		out.Done = true
		out.Took = current.UpdatedAt.Sub(target.UpdatedAt.Time)
	} else {
		out.Took = now.Sub(target.UpdatedAt.Time)
	}
	// Revisions carry second-resolution times set by two clocks (agent and
	// controller); a small skew must not show as a negative latency.
	out.Took = max(out.Took, 0)
	return out
}
