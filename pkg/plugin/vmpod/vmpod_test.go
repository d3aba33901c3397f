package vmpod

import (
	"encoding/json"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

const gi = api.Bytes(1 << 30)

func testVM(annotations map[string]string) *vmv1.VirtualMachine {
	vm := &vmv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", Annotations: annotations,
			Labels: map[string]string{api.AutoMigrationLabel: "true"}},
	}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 2000, Use: 500}
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 8, Use: 2}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Status.PodName = "vm-abcde"
	return vm
}

func runnerPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm-abcde",
			Labels: map[string]string{vmv1.VirtualMachineNameLabel: "vm"},
			Annotations: map[string]string{
				vmv1.VirtualMachineResourcesAnnotation:  `{"cpus":{"min":"250m","max":2,"use":"500m"},"memorySlots":{"min":1,"max":8,"use":2},"memorySlotSize":"1Gi"}`,
				vmv1.VirtualMachineOvercommitAnnotation: `{"cpu":"2","memory":"1.5"}`,
			}},
		Spec: corev1.PodSpec{NodeName: "node-a"},
	}
}

func TestRecordFallsBackToUse(t *testing.T) {
	p, err := PodFromObject(runnerPod())
	if err != nil {
		t.Fatal(err)
	}
	vm, err := VMFromObject(testVM(nil))
	if err != nil {
		t.Fatal(err)
	}
	r := Record(p, vm, nil)
	want := api.Resources{VCPU: 500, Mem: 2 * gi}
	if r.Reserved != want || r.Requested != want || !r.Factor.IsZero() || !r.Migratable || r.Node != "node-a" {
		t.Fatalf("record %+v", r)
	}
	if r.Overcommit.CPU != 2000 || r.Overcommit.Mem != 1500 {
		t.Fatalf("overcommit %+v", r.Overcommit)
	}
}

func TestRecordFromAnnotations(t *testing.T) {
	vm, err := VMFromObject(testVM(map[string]string{
		api.ScalingUnitAnnotation: `{"vCPUs":"250m","mem":"1Gi"}`,
		api.RequestedAnnotation:   `{"vCPUs":2,"mem":"8Gi"}`,
		api.ApprovedAnnotation:    `{"vCPUs":1,"mem":"4Gi"}`,
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := PodFromObject(runnerPod())
	r := Record(p, vm, nil)
	if r.Reserved != (api.Resources{VCPU: 1000, Mem: 4 * gi}) || r.Requested != (api.Resources{VCPU: 2000, Mem: 8 * gi}) ||
		r.Factor != (api.Resources{VCPU: 250, Mem: gi}) {
		t.Fatalf("record %+v", r)
	}
	inflight := api.Resources{VCPU: 1500, Mem: 6 * gi}
	if r := Record(p, vm, &inflight); r.Reserved != inflight {
		t.Fatalf("in-flight approval not held: %+v", r.Reserved)
	}
	// A migration target is never picked for migration.
	pod := runnerPod()
	pod.OwnerReferences = []metav1.OwnerReference{{Kind: "VirtualMachineMigration", Name: "m", Controller: ptr.To(true)}}
	tp, _ := PodFromObject(pod)
	if r := Record(tp, vm, nil); r.Migratable {
		t.Fatal("migration target marked migratable")
	}
	// Terminal pods hold nothing on any node.
	pod = runnerPod()
	pod.Status.Phase = corev1.PodSucceeded
	dp, _ := PodFromObject(pod)
	if r := Record(dp, vm, nil); r.Node != "" {
		t.Fatal("terminal pod still on a node")
	}
}

func TestBadAnnotationsReported(t *testing.T) {
	vm, err := VMFromObject(testVM(map[string]string{api.RequestedAnnotation: `{"vCPUs":"x"}`, api.ScalingUnitAnnotation: `{"vCPUs":0,"mem":"1Gi"}`}))
	if err == nil || !strings.Contains(err.Error(), api.RequestedAnnotation) || !strings.Contains(err.Error(), api.ScalingUnitAnnotation) {
		t.Fatalf("error %v", err)
	}
	if vm.Requested != nil || vm.ScalingUnit != nil || !vm.HasRequested {
		t.Fatalf("bad annotations used: %+v", vm)
	}
	pod := runnerPod()
	pod.Annotations[vmv1.VirtualMachineResourcesAnnotation] = "{"
	if _, err := PodFromObject(pod); err == nil {
		t.Fatal("bad resources annotation accepted")
	}
}

func TestContainerRequests(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("1Gi")}}},
		{Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}},
	}}}
	p, _ := PodFromObject(pod)
	r := Record(p, nil, nil)
	if r.Reserved != (api.Resources{VCPU: 1250, Mem: gi}) || r.VM != "" {
		t.Fatalf("record %+v", r)
	}
}

// apply runs a patch the way the apiserver does (same library).
func apply(t *testing.T, vm *vmv1.VirtualMachine, ops []Op) (*vmv1.VirtualMachine, error) {
	t.Helper()
	doc, _ := json.Marshal(vm)
	patch, _ := json.Marshal(ops)
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		return nil, err
	}
	var res vmv1.VirtualMachine
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatal(err)
	}
	return &res, nil
}

func TestRequestPatch(t *testing.T) {
	unit := api.Resources{VCPU: 250, Mem: gi}
	want := api.Resources{VCPU: 1000, Mem: 4 * gi}
	// No annotations at all: the object is created first, under a guard.
	obj := testVM(nil)
	vm, _ := VMFromObject(obj)
	ops := RequestPatch(vm, unit, want, nil)
	if ops[0].Op != "test" || ops[1].Op != "add" {
		t.Fatalf("ops %+v", ops)
	}
	out, err := apply(t, obj, ops)
	if err != nil {
		t.Fatal(err)
	}
	if out.Annotations[api.RequestedAnnotation] != `{"vCPUs":1,"mem":"4Gi"}` || out.Annotations[api.ScalingUnitAnnotation] != `{"vCPUs":"250m","mem":"1Gi"}` {
		t.Fatalf("annotations %v", out.Annotations)
	}
	// Nothing changed: no patch at all.
	vm2, _ := VMFromObject(out)
	if ops := RequestPatch(vm2, unit, want, nil); ops != nil {
		t.Fatalf("no-op request patched: %+v", ops)
	}
	// lastPermit lowers an approval but never raises it.
	out.Annotations[api.ApprovedAnnotation] = `{"vCPUs":1,"mem":"4Gi"}`
	vm3, _ := VMFromObject(out)
	lower := api.Resources{VCPU: 750, Mem: 3 * gi}
	if ops := RequestPatch(vm3, unit, want, &lower); len(ops) != 1 || ops[0].Value != `{"vCPUs":"750m","mem":"3Gi"}` || ops[0].Op != "replace" {
		t.Fatalf("lowering ops %+v", ops)
	}
	higher := api.Resources{VCPU: 2000, Mem: 8 * gi}
	if ops := RequestPatch(vm3, unit, want, &higher); ops != nil {
		t.Fatalf("lastPermit raised the approval: %+v", ops)
	}
}

func TestApprovalPatchGuards(t *testing.T) {
	obj := testVM(map[string]string{
		api.ScalingUnitAnnotation: `{"vCPUs":"250m","mem":"1Gi"}`,
		api.RequestedAnnotation:   `{"vCPUs":2,"mem":"8Gi"}`,
	})
	vm, _ := VMFromObject(obj)
	ops := ApprovalPatch(vm, api.Resources{VCPU: 2000, Mem: 8 * gi})
	out, err := apply(t, obj, ops)
	if err != nil {
		t.Fatal(err)
	}
	if out.Annotations[api.ApprovedAnnotation] != `{"vCPUs":2,"mem":"8Gi"}` {
		t.Fatalf("annotations %v", out.Annotations)
	}
	// The request changed since the approval was computed: refused.
	obj.Annotations[api.RequestedAnnotation] = `{"vCPUs":3,"mem":"8Gi"}`
	if _, err := apply(t, obj, ops); err == nil {
		t.Fatal("approval for a stale request applied")
	}
	// So is one for a changed unit.
	obj = testVM(map[string]string{api.RequestedAnnotation: `{"vCPUs":2,"mem":"8Gi"}`})
	vm, _ = VMFromObject(obj)
	ops = ApprovalPatch(vm, api.Resources{VCPU: 2000, Mem: 8 * gi})
	if _, err := apply(t, obj, ops); err != nil {
		t.Fatalf("absent unit guard: %v", err)
	}
	obj.Annotations[api.ScalingUnitAnnotation] = `{"vCPUs":1,"mem":"1Gi"}`
	if _, err := apply(t, obj, ops); err == nil {
		t.Fatal("approval applied after a unit appeared")
	}
}

func TestMigrationFor(t *testing.T) {
	m := MigrationFor("ns", "vm", "vm-abcde")
	raw, _ := json.Marshal(m)
	var got map[string]any
	_ = json.Unmarshal(raw, &got)
	spec := got["spec"].(map[string]any)
	if m.Name != "schedplugin-vm-abcde" || m.Labels[api.CreatedBySchedulerLabel] != "true" ||
		spec["vmName"] != "vm" || spec["preventMigrationToSameHost"] != true || spec["completionTimeout"] != float64(3600) ||
		spec["incremental"] != true || spec["autoConverge"] != true || spec["maxBandwidth"] != "1Gi" || spec["allowPostCopy"] != false {
		t.Fatalf("migration %s", raw)
	}
}
