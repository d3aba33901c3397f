// Package vmpod is what the scheduler plugin reads from VirtualMachines and
// pods, and the JSON patches it writes back, with no I/O: the autoscaling
// annotations on a VM (scaling unit, requested, approved), a runner pod's
// size and overcommit annotations, a plain pod's container requests, and how
// these combine into the accounting's record of a pod (state.Pod).
package vmpod

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// Annotations and labels of the agent↔plugin protocol (docs/protocols.md#annotations-and-labels).
const (
	ScalingUnitAnnotation       = "autoscaling.neon.tech/scaling-unit"
	RequestedAnnotation         = "internal.autoscaling.neon.tech/resources-requested"
	ApprovedAnnotation          = "internal.autoscaling.neon.tech/resources-approved"
	AutoMigrationLabel          = "autoscaling.neon.tech/auto-migration-enabled"
	AlwaysMigrateLabel          = "autoscaling.neon.tech/testing-only-always-migrate"
	CreatedBySchedulerLabel     = "autoscaling.neon.tech/created-by-scheduler"
	MigrationNamePrefix         = "schedplugin-"
	virtualMachineMigrationKind = "VirtualMachineMigration"
)

// VM is what the plugin keeps of a VirtualMachine.
type VM struct {
	Namespace, Name string
	// PodName is status.podName: the runner pod agents talk about.
	PodName string
	// Raw annotation texts, kept verbatim for the patches' test guards;
	// HasX says whether the annotation exists at all.
	RawScalingUnit, RawRequested, RawApproved string
	HasScalingUnit, HasRequested, HasApproved bool
	ScalingUnit, Requested, Approved          *api.Resources
	NilAnnotations                            bool
	Migratable                                bool
	Use                                       api.Resources
	ResourceVersion                           string
}

// VMFromObject reads a VirtualMachine. An annotation that does not parse is
// treated as absent and reported in the error, so one bad VM is logged but
// still accounted for by its spec.
func VMFromObject(vm *vmv1.VirtualMachine) (*VM, error) {
	out := &VM{
		Namespace: vm.Namespace, Name: vm.Name, PodName: vm.Status.PodName,
		NilAnnotations:  vm.Annotations == nil,
		Migratable:      vm.Labels[AutoMigrationLabel] == "true" || hasKey(vm.Labels, AlwaysMigrateLabel),
		ResourceVersion: vm.ResourceVersion,
		Use: api.Resources{
			VCPU: vm.Spec.Guest.CPUs.Use,
			Mem:  api.Bytes(vm.Spec.Guest.MemorySlotSize.Value() * int64(vm.Spec.Guest.MemorySlots.Use)),
		},
	}
	var errs []string
	read := func(key string, raw *string, has *bool, dst **api.Resources) {
		v, ok := vm.Annotations[key]
		*raw, *has = v, ok
		if !ok {
			return
		}
		var r api.Resources
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			errs = append(errs, fmt.Sprintf("annotation %s: %v", key, err))
			return
		}
		*dst = &r
	}
	read(ScalingUnitAnnotation, &out.RawScalingUnit, &out.HasScalingUnit, &out.ScalingUnit)
	read(RequestedAnnotation, &out.RawRequested, &out.HasRequested, &out.Requested)
	read(ApprovedAnnotation, &out.RawApproved, &out.HasApproved, &out.Approved)
	if out.ScalingUnit != nil && out.ScalingUnit.HasZero() {
		errs = append(errs, fmt.Sprintf("annotation %s: zero field in %s", ScalingUnitAnnotation, out.ScalingUnit))
		out.ScalingUnit = nil
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("VirtualMachine %s/%s: %s", vm.Namespace, vm.Name, strings.Join(errs, "; "))
	}
	return out, nil
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// Pod is what the plugin keeps of a pod.
type Pod struct {
	Key state.PodKey
	// VM names the VirtualMachine for runner pods (label vm.neon.tech/name).
	VM string
	// Node is spec.nodeName.
	Node string
	// Terminal pods (Succeeded, Failed) hold nothing.
	Terminal bool
	// MigrationTarget pods are owned by a VirtualMachineMigration.
	MigrationTarget bool
	// Labels say whether the pod may be migrated.
	Migratable bool
	// Use is the runner's current size (vm.neon.tech/resources use values),
	// or a plain pod's container requests.
	Use        api.Resources
	HasUse     bool
	Overcommit state.Overcommit
	pod        *corev1.Pod
}

// resourcesAnnotation is vm.neon.tech/resources.
type resourcesAnnotation struct {
	CPUs           vmv1.CPUs         `json:"cpus"`
	MemorySlots    vmv1.MemorySlots  `json:"memorySlots"`
	MemorySlotSize resource.Quantity `json:"memorySlotSize"`
}

// PodFromObject reads a pod.
func PodFromObject(p *corev1.Pod) (*Pod, error) {
	out := &Pod{
		Key:        state.PodKey{Namespace: p.Namespace, Name: p.Name},
		VM:         p.Labels[vmv1.VirtualMachineNameLabel],
		Node:       p.Spec.NodeName,
		Terminal:   p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		Migratable: p.Labels[AutoMigrationLabel] == "true" || hasKey(p.Labels, AlwaysMigrateLabel),
		Overcommit: state.NoOvercommit,
		pod:        p,
	}
	for _, o := range p.OwnerReferences {
		if o.Kind == virtualMachineMigrationKind && o.Controller != nil && *o.Controller {
			out.MigrationTarget = true
		}
	}
	if out.VM == "" {
		out.Use, out.HasUse = ContainerRequests(p), true
		return out, nil
	}
	var errs []string
	if raw, ok := p.Annotations[vmv1.VirtualMachineResourcesAnnotation]; ok {
		var r resourcesAnnotation
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			errs = append(errs, fmt.Sprintf("annotation %s: %v", vmv1.VirtualMachineResourcesAnnotation, err))
		} else {
			out.Use = api.Resources{VCPU: r.CPUs.Use, Mem: api.Bytes(r.MemorySlotSize.Value() * int64(r.MemorySlots.Use))}
			out.HasUse = true
		}
	}
	if raw, ok := p.Annotations[vmv1.VirtualMachineOvercommitAnnotation]; ok {
		var oc vmv1.OvercommitSettings
		if err := json.Unmarshal([]byte(raw), &oc); err != nil {
			errs = append(errs, fmt.Sprintf("annotation %s: %v", vmv1.VirtualMachineOvercommitAnnotation, err))
		} else {
			out.Overcommit = state.Overcommit{CPU: ratioMilli(oc.CPU), Mem: ratioMilli(oc.Memory)}
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("pod %s: %s", out.Key, strings.Join(errs, "; "))
	}
	return out, nil
}

// ratioMilli turns an overcommit ratio into thousandths; below 1 (or unset)
// means none.
func ratioMilli(q *resource.Quantity) uint32 {
	if q == nil {
		return 1000
	}
	m := q.MilliValue()
	if m < 1000 {
		return 1000
	}
	if m > 1_000_000 {
		return 1_000_000
	}
	return uint32(m)
}

// ContainerRequests is the sum of a pod's container requests.
func ContainerRequests(p *corev1.Pod) api.Resources {
	var cpu, mem int64
	for _, c := range p.Spec.Containers {
		if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
			cpu += q.MilliValue()
		}
		if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
			mem += q.Value()
		}
	}
	return api.Resources{VCPU: vmv1.MilliCPU(max(cpu, 0)), Mem: api.Bytes(max(mem, 0))}
}

// Record is the accounting's view of a pod, given its VM (nil if unknown)
// and an approval being written (nil if none). For a runner pod, Reserved is
// the approval in flight, else the VM's approved annotation, else the
// runner's current size; Requested is the requested annotation, else
// Reserved. Grants are made in the VM's scaling unit; with none, the pod
// cannot grow.
func Record(p *Pod, vm *VM, inflight *api.Resources) state.Pod {
	out := state.Pod{
		Key: p.Key, Node: p.Node, VM: p.VM, Overcommit: p.Overcommit,
		Migratable: p.Migratable && !p.MigrationTarget,
	}
	if p.pod != nil {
		out.CreatedAt = p.pod.CreationTimestamp.Time
	}
	if p.Terminal {
		out.Node = ""
		return out
	}
	use := p.Use
	if p.VM == "" {
		out.Reserved, out.Requested = use, use
		return out
	}
	if vm != nil {
		out.Migratable = out.Migratable || (vm.Migratable && !p.MigrationTarget)
		if !p.HasUse {
			use = vm.Use
		}
	}
	out.Reserved = use
	switch {
	case inflight != nil:
		out.Reserved = *inflight
	case vm != nil && vm.Approved != nil:
		out.Reserved = *vm.Approved
	}
	out.Requested = out.Reserved
	if vm != nil && vm.Requested != nil && vm.ScalingUnit != nil {
		out.Requested = *vm.Requested
		out.Factor = *vm.ScalingUnit
	}
	return out
}

// Op is one JSON-patch operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

func annotationPath(key string) string {
	return "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(key, "~", "~0"), "/", "~1")
}

func encode(r api.Resources) string {
	b, _ := json.Marshal(r) // Resources always encodes
	return string(b)
}

// setOp writes an annotation, whether or not it exists yet.
func setOp(has bool, key, value string) Op {
	op := "replace"
	if !has {
		op = "add"
	}
	return Op{Op: op, Path: annotationPath(key), Value: value}
}

// ensureAnnotations makes sure the VM has an annotations object to write
// into, guarded so a concurrent writer's annotations are never replaced.
func ensureAnnotations(vm *VM) []Op {
	if !vm.NilAnnotations {
		return nil
	}
	return []Op{
		{Op: "test", Path: "/metadata/annotations", Value: nil},
		{Op: "add", Path: "/metadata/annotations", Value: map[string]string{}},
	}
}

// RequestPatch records an agent's request on its VM: the scaling unit, the
// request, and the agent's last permit as the approval when it lowers it
// (a permit the agent never received is given back; an approval is never
// raised this way, so a stale or forged lastPermit cannot overcommit a
// node). It returns no ops when the VM already says all of it.
func RequestPatch(vm *VM, unit, requested api.Resources, lastPermit *api.Resources) []Op {
	var ops []Op
	if vm.ScalingUnit == nil || *vm.ScalingUnit != unit {
		ops = append(ops, setOp(vm.HasScalingUnit, ScalingUnitAnnotation, encode(unit)))
	}
	if vm.Requested == nil || *vm.Requested != requested {
		ops = append(ops, setOp(vm.HasRequested, RequestedAnnotation, encode(requested)))
	}
	if lastPermit != nil && vm.Approved != nil && *lastPermit != *vm.Approved && lastPermit.FitsIn(*vm.Approved) {
		ops = append(ops, setOp(vm.HasApproved, ApprovedAnnotation, encode(*lastPermit)))
	}
	if len(ops) == 0 {
		return nil
	}
	return append(ensureAnnotations(vm), ops...)
}

// ApprovalPatch writes an approval, guarded by tests that the scaling unit
// and request it was computed from are still what the VM says.
func ApprovalPatch(vm *VM, approved api.Resources) []Op {
	ops := ensureAnnotations(vm)
	ops = append(ops,
		Op{Op: "test", Path: annotationPath(ScalingUnitAnnotation), Value: rawOrNil(vm.HasScalingUnit, vm.RawScalingUnit)},
		Op{Op: "test", Path: annotationPath(RequestedAnnotation), Value: rawOrNil(vm.HasRequested, vm.RawRequested)},
		setOp(vm.HasApproved, ApprovedAnnotation, encode(approved)),
	)
	return ops
}

func rawOrNil(has bool, raw string) any {
	if !has {
		return nil
	}
	return raw
}

// MigrationFor is the VirtualMachineMigration the plugin creates to move a
// VM off an overfull node.
func MigrationFor(namespace, vmName, podName string) *vmv1.VirtualMachineMigration {
	t, f := true, false
	bw := resource.MustParse("1Gi")
	return &vmv1.VirtualMachineMigration{
		TypeMeta: metav1.TypeMeta{APIVersion: vmv1.GroupVersion.String(), Kind: virtualMachineMigrationKind},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: MigrationNamePrefix + podName,
			Labels: map[string]string{CreatedBySchedulerLabel: "true"},
		},
		Spec: vmv1.VirtualMachineMigrationSpec{
			VMName: vmName, PreventMigrationToSameHost: &t, CompletionTimeout: 3600,
			Incremental: &t, AutoConverge: &t, MaxBandwidth: &bw, AllowPostCopy: f,
		},
	}
}

// RequestApprovalPatch records an agent's request and the approval decided
// for it in one write, guarded by tests that the scaling unit and request
// the decision started from are still the VM's.
func RequestApprovalPatch(vm *VM, unit, requested, approved api.Resources) []Op {
	ops := ensureAnnotations(vm)
	ops = append(ops,
		Op{Op: "test", Path: annotationPath(ScalingUnitAnnotation), Value: rawOrNil(vm.HasScalingUnit, vm.RawScalingUnit)},
		Op{Op: "test", Path: annotationPath(RequestedAnnotation), Value: rawOrNil(vm.HasRequested, vm.RawRequested)},
	)
	if vm.ScalingUnit == nil || *vm.ScalingUnit != unit {
		ops = append(ops, setOp(vm.HasScalingUnit, ScalingUnitAnnotation, encode(unit)))
	}
	if vm.Requested == nil || *vm.Requested != requested {
		ops = append(ops, setOp(vm.HasRequested, RequestedAnnotation, encode(requested)))
	}
	if vm.Approved == nil || *vm.Approved != approved {
		ops = append(ops, setOp(vm.HasApproved, ApprovedAnnotation, encode(approved)))
	}
	return ops
}
