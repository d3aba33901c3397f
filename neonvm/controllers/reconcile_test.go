package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// These tests run the reconcilers' phases against controller-runtime's
// fake client and a recording fake of the guest, so that a reconciler
// change is checked in seconds; tests/integration runs the same
// reconcilers against a real apiserver.

// testNow is the fake clock of every reconciler here.
var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

var unitSettings = podspec.Settings{RunnerImage: "vmscale/neonvm-runner:test", QEMUUser: "qemu", DefaultCPUScalingMode: vmv1.CPUScalingModeQMP}

// fakeGuest is a guest that does what it is asked at once: hot-plugging
// vCPUs changes what Observe sees, and so on. Every call is recorded.
type fakeGuest struct {
	o     observed
	calls []string
	// base is the memory without virtio-mem (memorySlots.min slots).
	base int64
	// observeErr and setErr, when set, are returned by Observe and by
	// every Set/Plug call.
	observeErr, setErr error
}

func (g *fakeGuest) record(format string, args ...any) {
	g.calls = append(g.calls, fmt.Sprintf(format, args...))
}

func (g *fakeGuest) Observe(_ context.Context, vm *vmv1.VirtualMachine, mode vmv1.CPUScalingMode) (observed, error) {
	g.record("Observe %s %s", vm.Status.PodIP, mode)
	return g.o, g.observeErr
}

func (g *fakeGuest) PlugCPUs(_ context.Context, _ *vmv1.VirtualMachine, n int) error {
	g.record("PlugCPUs %d", n)
	if g.setErr != nil {
		return g.setErr
	}
	g.o.PluggedCPUs = n
	return nil
}

func (g *fakeGuest) SetRunnerCPU(_ context.Context, _ *vmv1.VirtualMachine, cpu vmv1.MilliCPU) error {
	g.record("SetRunnerCPU %s", cpu)
	if g.setErr != nil {
		return g.setErr
	}
	g.o.RunnerCPU = cpu
	return nil
}

func (g *fakeGuest) SetMemory(_ context.Context, _ *vmv1.VirtualMachine, requested int64) error {
	g.record("SetMemory %d", requested)
	if g.setErr != nil {
		return g.setErr
	}
	g.o.VirtioMemRequested, g.o.Memory = requested, g.base+requested
	return nil
}

// matching is a guest that has vm's spec resources.
func matching(vm *vmv1.VirtualMachine) *fakeGuest {
	total, requested := memoryTarget(&vm.Spec.Guest)
	use := vm.Spec.Guest.CPUs.Use
	return &fakeGuest{
		o:    observed{RunnerCPU: use, PluggedCPUs: int(use.RoundedUp()), Memory: total, VirtioMemRequested: requested},
		base: total - requested,
	}
}

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := vmv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// newFakeClient is the fake apiserver: VMs and migrations have a status
// subresource, as in the cluster, so a reconciler that writes status with
// Update (or spec with Status().Update) fails here too.
func newFakeClient(t *testing.T, objs ...client.Object) client.WithWatch {
	t.Helper()
	return fake.NewClientBuilder().
		WithScheme(testScheme(t)).
		WithStatusSubresource(&vmv1.VirtualMachine{}, &vmv1.VirtualMachineMigration{}).
		WithObjects(objs...).
		Build()
}

func newTestVM(name string) *vmv1.VirtualMachine {
	vm := &vmv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name), Generation: 1},
		Spec: vmv1.VirtualMachineSpec{
			Guest: vmv1.Guest{
				CPUs:           vmv1.CPUs{Min: 1000, Max: 4000, Use: 1000},
				MemorySlotSize: resource.MustParse("256Mi"),
				MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 8, Use: 2},
				RootDisk:       vmv1.RootDisk{Image: "vmscale/vm-postgres:test"},
			},
		},
	}
	vmv1.DefaultVirtualMachine(vm, vmv1.CPUScalingModeQMP)
	return vm
}

// runningVM is vm in phase Running in pod <name>-pod, with the status of
// a guest at its spec, and that pod, ready.
func runningVM(name string) (*vmv1.VirtualMachine, *corev1.Pod) {
	vm := newTestVM(name)
	vm.Finalizers = []string{vmv1.VirtualMachineFinalizer}
	vm.Spec.EnableSSH = ptr.To(false)
	total, _ := memoryTarget(&vm.Spec.Guest)
	cpus := vm.Spec.Guest.CPUs.Use
	vm.Status = vmv1.VirtualMachineStatus{
		Phase: vmv1.VmRunning, PodName: name + "-pod", PodIP: "10.0.0.5", Node: "node-a",
		CPUs: &cpus, MemorySize: memoryQuantity(total),
	}
	setCondition(vm, ConditionAvailable, metav1.ConditionTrue, "runner pod is ready")
	pod, err := podspec.RunnerPod(vm, vm.Status.PodName, unitSettings, false)
	if err != nil {
		panic(err)
	}
	readyPod(pod, "10.0.0.5", "node-a")
	return vm, pod
}

// readyPod makes pod look scheduled with its runner container Ready.
func readyPod(pod *corev1.Pod, ip, node string) {
	pod.Spec.NodeName = node
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip,
		ContainerStatuses: []corev1.ContainerStatus{{Name: podspec.RunnerContainer, Ready: true}},
	}
}

type vmFixture struct {
	t      *testing.T
	c      client.WithWatch
	r      *VMReconciler
	guest  *fakeGuest
	events *events.FakeRecorder
	key    types.NamespacedName
}

func newVMFixture(t *testing.T, vm *vmv1.VirtualMachine, guest *fakeGuest, objs ...client.Object) *vmFixture {
	t.Helper()
	c := newFakeClient(t, append([]client.Object{vm}, objs...)...)
	rec := events.NewFakeRecorder(100)
	return &vmFixture{
		t: t, c: c, guest: guest, events: rec,
		key: client.ObjectKeyFromObject(vm),
		r: &VMReconciler{
			Client: c, Recorder: rec, Settings: unitSettings, Guest: guest,
			Now: func() time.Time { return testNow },
		},
	}
}

// mustReconcile runs one reconcile of key, failing the test on an error.
func mustReconcile(t *testing.T, r reconcile.Reconciler, key types.NamespacedName) ctrl.Result {
	t.Helper()
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	return res
}

// mustGet reads key into obj, failing the test when it cannot.
func mustGet[T client.Object](t *testing.T, c client.Client, key types.NamespacedName, obj T) T {
	t.Helper()
	if err := c.Get(context.Background(), key, obj); err != nil {
		t.Fatalf("get %T %s: %v", obj, key, err)
	}
	return obj
}

func (f *vmFixture) reconcile() ctrl.Result {
	f.t.Helper()
	return mustReconcile(f.t, f.r, f.key)
}

func (f *vmFixture) vm() *vmv1.VirtualMachine {
	f.t.Helper()
	return mustGet(f.t, f.c, f.key, &vmv1.VirtualMachine{})
}

func (f *vmFixture) pod(name string) *corev1.Pod {
	f.t.Helper()
	return mustGet(f.t, f.c, types.NamespacedName{Namespace: f.key.Namespace, Name: name}, &corev1.Pod{})
}

// runPod schedules pod on node and makes its runner Ready, as the
// scheduler and the kubelet would (the status through its subresource).
func (f *vmFixture) runPod(pod *corev1.Pod, ip, node string) {
	f.t.Helper()
	runPod(f.t, f.c, pod, ip, node)
}

func runPod(t *testing.T, c client.Client, pod *corev1.Pod, ip, node string) {
	t.Helper()
	pod.Spec.NodeName = node
	if err := c.Update(context.Background(), pod); err != nil {
		t.Fatalf("schedule pod %s: %v", pod.Name, err)
	}
	readyPod(pod, ip, node)
	if err := c.Status().Update(context.Background(), pod); err != nil {
		t.Fatalf("run pod %s: %v", pod.Name, err)
	}
}

// eventReasons drains the recorded events into their reasons.
func (f *vmFixture) eventReasons() []string {
	return drainReasons(f.events)
}

func drainReasons(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			// "<type> <reason> ..."
			if fields := strings.Fields(e); len(fields) > 1 {
				out = append(out, fields[1])
			}
		default:
			return out
		}
	}
}

func assertCondition(t *testing.T, conds []metav1.Condition, typ string, status metav1.ConditionStatus, msgPart string) {
	t.Helper()
	c := meta.FindStatusCondition(conds, typ)
	switch {
	case c == nil:
		t.Errorf("no %s condition in %+v", typ, conds)
	case c.Status != status || !strings.Contains(c.Message, msgPart):
		t.Errorf("%s condition = %s %q, want %s and a message with %q", typ, c.Status, c.Message, status, msgPart)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestVMReconcilerCreatesTheRunnerPodAndRunsOnceItIsReady(t *testing.T) {
	vm := newTestVM("new")
	f := newVMFixture(t, vm, matching(vm))

	// Phase "": the finalizer, the Available condition, then Pending.
	f.reconcile()
	got := f.vm()
	if !contains(got.Finalizers, vmv1.VirtualMachineFinalizer) {
		t.Errorf("finalizers = %v, want %s", got.Finalizers, vmv1.VirtualMachineFinalizer)
	}
	if got.Status.Phase != vmv1.VmPending {
		t.Fatalf("phase = %q, want Pending", got.Status.Phase)
	}
	assertCondition(t, got.Status.Conditions, ConditionAvailable, metav1.ConditionUnknown, "")

	// Pending: the pod's name is persisted before the pod is made.
	f.reconcile()
	podName := f.vm().Status.PodName
	if !strings.HasPrefix(podName, "new-") || len(podName) != len("new-")+5 {
		t.Fatalf("status.podName = %q, want new-<5 chars>", podName)
	}
	var pods corev1.PodList
	if err := f.c.List(context.Background(), &pods); err != nil || len(pods.Items) != 0 {
		t.Fatalf("pods before the name was persisted: %d %v", len(pods.Items), err)
	}

	// Then the SSH secret and the pod, owned by the VM.
	if res := f.reconcile(); res.RequeueAfter != requeueBusy {
		t.Errorf("requeue after creating the pod = %v, want %v", res.RequeueAfter, requeueBusy)
	}
	pod := f.pod(podName)
	if owner := metav1.GetControllerOf(pod); owner == nil || owner.UID != vm.UID {
		t.Errorf("pod controller = %+v, want the VM", owner)
	}
	if pod.Spec.Containers[0].Image != unitSettings.RunnerImage {
		t.Errorf("runner image = %q", pod.Spec.Containers[0].Image)
	}
	var secret corev1.Secret
	if err := f.c.Get(context.Background(), types.NamespacedName{Namespace: "default", Name: "ssh-neonvm-new"}, &secret); err != nil {
		t.Errorf("SSH secret: %v", err)
	} else if secret.Type != corev1.SecretTypeSSHAuth || len(secret.Data[corev1.SSHAuthPrivateKey]) == 0 {
		t.Errorf("SSH secret type %s, keys %d", secret.Type, len(secret.Data))
	}
	if r := f.eventReasons(); !contains(r, "RunnerPodCreated") {
		t.Errorf("events %v, want RunnerPodCreated", r)
	}

	// A pod not Ready yet keeps the VM Pending.
	f.reconcile()
	if p := f.vm().Status.Phase; p != vmv1.VmPending {
		t.Fatalf("phase with the pod not ready = %q", p)
	}

	f.runPod(pod, "10.1.2.3", "node-b")
	f.reconcile()
	got = f.vm()
	if got.Status.Phase != vmv1.VmRunning || got.Status.PodIP != "10.1.2.3" || got.Status.Node != "node-b" {
		t.Fatalf("status after the pod ran: phase %q ip %q node %q", got.Status.Phase, got.Status.PodIP, got.Status.Node)
	}
	assertCondition(t, got.Status.Conditions, ConditionAvailable, metav1.ConditionTrue, podName)

	// Running: the guest's resources go into the status.
	if res := f.reconcile(); res.RequeueAfter != requeueIdle {
		t.Errorf("requeue of a running VM at its spec = %v, want %v", res.RequeueAfter, requeueIdle)
	}
	got = f.vm()
	total, _ := memoryTarget(&vm.Spec.Guest)
	if got.Status.CPUs == nil || *got.Status.CPUs != 1000 || got.Status.MemorySize == nil || got.Status.MemorySize.Value() != total {
		t.Errorf("status resources = %v %v, want 1 CPU and %d bytes", got.Status.CPUs, got.Status.MemorySize, total)
	}
	if want := "Observe 10.1.2.3 QmpScaling"; !contains(f.guest.calls, want) {
		t.Errorf("guest calls %v, want %q", f.guest.calls, want)
	}
}

func TestVMReconcilerWithoutRunnerImageIsDegraded(t *testing.T) {
	vm := newTestVM("noimage")
	vm.Finalizers = []string{vmv1.VirtualMachineFinalizer}
	vm.Spec.EnableSSH = ptr.To(false)
	vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmPending, PodName: "noimage-abcde"}
	f := newVMFixture(t, vm, matching(vm))
	f.r.Settings.RunnerImage = ""
	f.reconcile()
	var pods corev1.PodList
	if err := f.c.List(context.Background(), &pods); err != nil || len(pods.Items) != 0 {
		t.Fatalf("pods: %d %v", len(pods.Items), err)
	}
	assertCondition(t, f.vm().Status.Conditions, ConditionDegraded, metav1.ConditionTrue, "no runner image")
}

// scaleTo runs reconciles until the VM is Running again, at most n.
func (f *vmFixture) scaleTo(n int) *vmv1.VirtualMachine {
	f.t.Helper()
	sawScaling := f.vm().Status.Phase == vmv1.VmScaling
	for i := 0; i < n; i++ {
		f.reconcile()
		vm := f.vm()
		switch vm.Status.Phase {
		case vmv1.VmScaling:
			sawScaling = true
		case vmv1.VmRunning:
			if sawScaling {
				return vm
			}
		default:
			f.t.Fatalf("phase %q while scaling", vm.Status.Phase)
		}
	}
	f.t.Fatalf("not Running again after %d reconciles; guest calls %v", n, f.guest.calls)
	return nil
}

func TestVMReconcilerScalesCPUByHotplug(t *testing.T) {
	vm, pod := runningVM("qmp")
	guest := matching(vm)
	vm.Spec.Guest.CPUs.Use = 2500
	f := newVMFixture(t, vm, guest, pod)

	got := f.scaleTo(10)
	// All vCPUs in one step, then the runner's fraction.
	if want := []string{"PlugCPUs 3", "SetRunnerCPU 2500m"}; !equalCalls(setCalls(guest.calls), want) {
		t.Errorf("scaling calls %v, want %v", setCalls(guest.calls), want)
	}
	if got.Status.CPUs == nil || *got.Status.CPUs != 2500 {
		t.Errorf("status.cpus = %v, want 2.5", got.Status.CPUs)
	}
}

func TestVMReconcilerScalesCPUDownByUnplugging(t *testing.T) {
	vm, pod := runningVM("down")
	vm.Spec.Guest.CPUs.Use = 3000
	guest := matching(vm)
	cpus := vm.Spec.Guest.CPUs.Use
	vm.Status.CPUs = &cpus
	vm.Spec.Guest.CPUs.Use = 1500
	f := newVMFixture(t, vm, guest, pod)

	got := f.scaleTo(10)
	if want := []string{"PlugCPUs 2", "SetRunnerCPU 1500m"}; !equalCalls(setCalls(guest.calls), want) {
		t.Errorf("scaling calls %v, want %v", setCalls(guest.calls), want)
	}
	if got.Status.CPUs == nil || *got.Status.CPUs != 1500 {
		t.Errorf("status.cpus = %v, want 1.5", got.Status.CPUs)
	}
}

func TestVMReconcilerScalesCPUThroughTheRunnerInSysfsMode(t *testing.T) {
	vm, pod := runningVM("sysfs")
	vm.Spec.CPUScalingMode = ptr.To(vmv1.CPUScalingModeSysfs)
	guest := matching(vm)
	guest.o.PluggedCPUs = 0 // not read in Sysfs mode
	vm.Spec.Guest.CPUs.Use = 3000
	f := newVMFixture(t, vm, guest, pod)

	got := f.scaleTo(10)
	if want := []string{"SetRunnerCPU 3"}; !equalCalls(setCalls(guest.calls), want) {
		t.Errorf("scaling calls %v, want %v", setCalls(guest.calls), want)
	}
	if !contains(guest.calls, "Observe 10.0.0.5 SysfsScaling") {
		t.Errorf("guest calls %v, want Observe in SysfsScaling", guest.calls)
	}
	if got.Status.CPUs == nil || *got.Status.CPUs != 3000 {
		t.Errorf("status.cpus = %v, want 3", got.Status.CPUs)
	}
}

func TestVMReconcilerResizesMemoryAndRecordsTheRevision(t *testing.T) {
	vm, pod := runningVM("mem")
	guest := matching(vm)
	vm.Spec.Guest.MemorySlots.Use = 5
	vm.Spec.TargetRevision = &vmv1.RevisionWithTime{Revision: vmv1.Revision{Value: 7}}
	f := newVMFixture(t, vm, guest, pod)

	// The first pass sees the difference: Scaling, with the status still
	// showing the guest.
	f.reconcile()
	mid := f.vm()
	if mid.Status.Phase != vmv1.VmScaling {
		t.Fatalf("phase = %q, want Scaling", mid.Status.Phase)
	}
	if mid.Status.CurrentRevision != nil {
		t.Errorf("revision recorded while scaling: %+v", mid.Status.CurrentRevision)
	}

	got := f.scaleTo(10)
	slot := vm.Spec.Guest.MemorySlotSize.Value()
	if want := []string{fmt.Sprintf("SetMemory %d", 3*slot)}; !equalCalls(setCalls(guest.calls), want) {
		t.Errorf("scaling calls %v, want %v", setCalls(guest.calls), want)
	}
	if got.Status.MemorySize == nil || got.Status.MemorySize.Value() != 5*slot {
		t.Errorf("status.memorySize = %v, want %d", got.Status.MemorySize, 5*slot)
	}
	if r := got.Status.CurrentRevision; r == nil || r.Revision.Value != 7 || !r.UpdatedAt.Time.Equal(testNow) {
		t.Errorf("currentRevision = %+v, want 7 at %v", r, testNow)
	}
}

func TestVMReconcilerScalingFailureIsAnEventAndARetry(t *testing.T) {
	vm, pod := runningVM("qmpfail")
	guest := matching(vm)
	guest.setErr = errors.New("QMP: device_add failed")
	vm.Spec.Guest.CPUs.Use = 2000
	f := newVMFixture(t, vm, guest, pod)

	if res := f.reconcile(); res.RequeueAfter != 5*time.Second {
		t.Errorf("requeue after a failed step = %v, want 5s", res.RequeueAfter)
	}
	if got := f.vm(); got.Status.Phase != vmv1.VmScaling || *got.Status.CPUs != 1000 {
		t.Errorf("phase %q cpus %v, want Scaling with the guest's 1 CPU", got.Status.Phase, got.Status.CPUs)
	}
	if r := f.eventReasons(); !contains(r, "QMPFailed") {
		t.Errorf("events %v, want QMPFailed", r)
	}
}

func TestVMReconcilerUnreachableGuestKeepsTheStatus(t *testing.T) {
	vm, pod := runningVM("unreachable")
	guest := matching(vm)
	guest.observeErr = errors.New("dial tcp: connection refused")
	f := newVMFixture(t, vm, guest, pod)
	before := f.vm().Status

	if res := f.reconcile(); res.RequeueAfter != 5*time.Second {
		t.Errorf("requeue = %v, want 5s", res.RequeueAfter)
	}
	got := f.vm().Status
	if got.Phase != vmv1.VmRunning || *got.CPUs != *before.CPUs || !got.MemorySize.Equal(*before.MemorySize) {
		t.Errorf("status changed: %+v", got)
	}
	if len(setCalls(guest.calls)) != 0 {
		t.Errorf("scaled an unobserved guest: %v", guest.calls)
	}
	if r := f.eventReasons(); !contains(r, "GuestUnreachable") {
		t.Errorf("events %v, want GuestUnreachable", r)
	}
}

func TestVMReconcilerRunnerPodGone(t *testing.T) {
	for _, c := range []struct {
		policy       vmv1.RestartPolicy
		wantPhase    vmv1.VmPhase
		wantRestarts int32
	}{
		{vmv1.RestartPolicyNever, vmv1.VmFailed, 0},
		{vmv1.RestartPolicyOnFailure, vmv1.VmPending, 1},
		{vmv1.RestartPolicyAlways, vmv1.VmPending, 1},
	} {
		t.Run(string(c.policy), func(t *testing.T) {
			vm, _ := runningVM("gone")
			vm.Spec.RestartPolicy = c.policy
			guest := matching(vm)
			f := newVMFixture(t, vm, guest) // no pod

			f.reconcile()
			got := f.vm()
			if got.Status.Phase != vmv1.VmFailed {
				t.Fatalf("phase = %q, want Failed", got.Status.Phase)
			}
			assertCondition(t, got.Status.Conditions, ConditionDegraded, metav1.ConditionTrue, "gone-pod is gone")

			// Failed: the pod's fields go, and the restart policy decides.
			f.reconcile()
			got = f.vm()
			if got.Status.Phase != c.wantPhase || got.Status.RestartCount != c.wantRestarts {
				t.Errorf("phase %q restarts %d, want %q %d", got.Status.Phase, got.Status.RestartCount, c.wantPhase, c.wantRestarts)
			}
			if got.Status.PodName != "" || got.Status.PodIP != "" || got.Status.CPUs != nil {
				t.Errorf("pod fields kept: %+v", got.Status)
			}
			assertCondition(t, got.Status.Conditions, ConditionAvailable, metav1.ConditionFalse, "not running")
			if len(guest.calls) != 0 {
				t.Errorf("guest called without a pod: %v", guest.calls)
			}
		})
	}
}

func TestVMReconcilerRunnerPodEnded(t *testing.T) {
	for _, c := range []struct {
		podPhase corev1.PodPhase
		want     vmv1.VmPhase
	}{
		{corev1.PodFailed, vmv1.VmFailed},
		{corev1.PodSucceeded, vmv1.VmSucceeded},
	} {
		t.Run(string(c.podPhase), func(t *testing.T) {
			vm, pod := runningVM("ended")
			pod.Status.Phase = c.podPhase
			f := newVMFixture(t, vm, matching(vm), pod)

			f.reconcile()
			if got := f.vm(); got.Status.Phase != c.want {
				t.Fatalf("phase = %q, want %q", got.Status.Phase, c.want)
			}
			// Stopped (restartPolicy Never): the pod is deleted.
			f.reconcile()
			err := f.c.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{})
			if !apierrors.IsNotFound(err) {
				t.Errorf("runner pod after the VM stopped: %v, want deleted", err)
			}
			if got := f.vm(); got.Status.Phase != c.want || got.Status.PodName != "" {
				t.Errorf("phase %q pod %q, want %q and no pod", got.Status.Phase, got.Status.PodName, c.want)
			}
			if r := f.eventReasons(); !contains(r, "RunnerPodDeleted") {
				t.Errorf("events %v, want RunnerPodDeleted", r)
			}
		})
	}
}

// The runner's report on QEMU's end (its termination message) is told in
// an event and in the Available condition, and survives the pod's deletion
// into the restart's event.
func TestVMReconcilerTellsWhyTheGuestStopped(t *testing.T) {
	vm, pod := runningVM("reset")
	vm.Spec.RestartPolicy = vmv1.RestartPolicyAlways
	pod.Status.Phase = corev1.PodSucceeded
	report := "QEMU exited with status 0: the guest reset itself: a reboot, a kernel panic (panic=-1) or a triple fault; -no-reboot turns it into an exit (SHUTDOWN reason guest-reset)\nlast QMP events: 10:00:00.000 RESET {\"guest\":true,\"reason\":\"guest-reset\"}\nlast output:\nKernel panic - not syncing: oops"
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: podspec.RunnerContainer,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", Message: report}}}}
	f := newVMFixture(t, vm, matching(vm), pod)

	f.reconcile()
	got := f.vm()
	assertCondition(t, got.Status.Conditions, ConditionAvailable, metav1.ConditionFalse, "the guest stopped: QEMU exited with status 0: the guest reset itself")
	var notes []string
	for len(f.events.Events) > 0 {
		notes = append(notes, <-f.events.Events)
	}
	found := false
	for _, n := range notes {
		if strings.HasPrefix(n, "Warning GuestStopped") && strings.Contains(n, "Kernel panic - not syncing") {
			found = true
		}
	}
	if !found {
		t.Errorf("events %q: want a GuestStopped warning with the whole report", notes)
	}

	f.reconcile() // stopped: the pod is deleted, the VM restarts
	got = f.vm()
	if got.Status.Phase != vmv1.VmPending || got.Status.RestartCount != 1 {
		t.Fatalf("phase %q restarts %d, want Pending after 1 restart", got.Status.Phase, got.Status.RestartCount)
	}
	assertCondition(t, got.Status.Conditions, ConditionAvailable, metav1.ConditionFalse, "guest-reset")
	restart := ""
	for len(f.events.Events) > 0 {
		if e := <-f.events.Events; strings.Contains(e, "Restarting") {
			restart = e
		}
	}
	if !strings.Contains(restart, "the guest stopped: QEMU exited with status 0") {
		t.Errorf("restart event %q: want the reason", restart)
	}
}

// Without a report (the runner died before writing one), the kubelet's
// reason and exit code stand in.
func TestRunnerExitWithoutAReport(t *testing.T) {
	pod := &corev1.Pod{}
	pod.Name = "p"
	pod.Status.Phase = corev1.PodFailed
	if got := runnerExitSummary(pod); !strings.Contains(got, "no report") {
		t.Errorf("no container status: %q", got)
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: podspec.RunnerContainer,
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}}}}
	if got := runnerExitSummary(pod); got != "the runner container ended: OOMKilled, exit code 137" {
		t.Errorf("summary %q", got)
	}
}

func TestVMReconcilerPodFailingBeforeTheGuestRan(t *testing.T) {
	vm := newTestVM("early")
	vm.Finalizers = []string{vmv1.VirtualMachineFinalizer}
	vm.Spec.EnableSSH = ptr.To(false)
	vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmPending, PodName: "early-pod"}
	pod, err := podspec.RunnerPod(vm, "early-pod", unitSettings, false)
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodFailed
	f := newVMFixture(t, vm, matching(vm), pod)

	f.reconcile()
	got := f.vm()
	if got.Status.Phase != vmv1.VmFailed {
		t.Fatalf("phase = %q, want Failed", got.Status.Phase)
	}
	assertCondition(t, got.Status.Conditions, ConditionDegraded, metav1.ConditionTrue, "failed before the guest ran")
}

func TestVMReconcilerRefusesAPodItDoesNotControl(t *testing.T) {
	vm, pod := runningVM("foreign")
	pod.OwnerReferences = nil
	f := newVMFixture(t, vm, matching(vm), pod)
	_, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: f.key})
	if err == nil || !strings.Contains(err.Error(), "not controlled by VirtualMachine foreign") {
		t.Fatalf("reconcile = %v, want the pod refused", err)
	}
}

func TestVMReconcilerRemovesTheFinalizerOnDeletion(t *testing.T) {
	vm, pod := runningVM("deleted")
	f := newVMFixture(t, vm, matching(vm), pod)
	// The fake client, like the apiserver, only marks an object with
	// finalizers as deleted.
	if err := f.c.Delete(context.Background(), f.vm()); err != nil {
		t.Fatal(err)
	}
	if f.vm().DeletionTimestamp.IsZero() {
		t.Fatal("VM not marked deleted")
	}
	f.reconcile()
	err := f.c.Get(context.Background(), f.key, &vmv1.VirtualMachine{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("VM after its finalizer went: %v, want gone", err)
	}
	if len(f.guest.calls) != 0 {
		t.Errorf("guest called for a deleted VM: %v", f.guest.calls)
	}
	// A VM gone meanwhile is no error.
	f.reconcile()
}

func TestVMReconcilerSyncsPodLabels(t *testing.T) {
	vm, pod := runningVM("labels")
	vm.Labels = map[string]string{"team": "storage"}
	pod.Annotations["k8s.v1.cni.cncf.io/network-status"] = "[]"
	f := newVMFixture(t, vm, matching(vm), pod)

	f.reconcile()
	got := f.pod(pod.Name)
	if got.Labels["team"] != "storage" {
		t.Errorf("pod labels %v, want the VM's team=storage", got.Labels)
	}
	if got.Annotations["k8s.v1.cni.cncf.io/network-status"] != "[]" {
		t.Errorf("network annotation dropped: %v", got.Annotations)
	}
}

// setCalls are the calls that change the guest.
func setCalls(calls []string) []string {
	var out []string
	for _, c := range calls {
		if !strings.HasPrefix(c, "Observe") {
			out = append(out, c)
		}
	}
	return out
}

func equalCalls(a, b []string) bool {
	return strings.Join(a, "|") == strings.Join(b, "|")
}

func TestVMReconcilerExtraNetworkAddressFromCreationToDeletion(t *testing.T) {
	vm := newTestVM("net")
	vm.Spec.EnableSSH = ptr.To(false)
	vm.Spec.ExtraNetwork = &vmv1.ExtraNetwork{Enable: true, Interface: "net1"}
	f := newVMFixture(t, vm, matching(vm))
	f.r.IPAM, _ = newTestIPAM(t, f.c, "10.100.0.0/16")

	// The address comes before the pod, which carries it.
	f.reconcile()
	got := f.vm()
	if got.Status.Phase != vmv1.VmPending || got.Status.ExtraNetIP != "10.100.0.1" || got.Status.ExtraNetMask != "255.255.0.0" {
		t.Fatalf("status = phase %q %s/%s, want Pending with 10.100.0.1/255.255.0.0", got.Status.Phase, got.Status.ExtraNetIP, got.Status.ExtraNetMask)
	}
	assertCondition(t, got.Status.Conditions, ConditionExtraNetwork, metav1.ConditionTrue, "10.100.0.1")
	var pool vmv1.IPPool
	if err := f.c.Get(context.Background(), testPool, &pool); err != nil || len(pool.Spec.Allocations) != 1 {
		t.Fatalf("pool allocations %v (%v), want the VM's one", pool.Spec.Allocations, err)
	}

	if err := f.c.Delete(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	f.reconcile()
	if err := f.c.Get(context.Background(), testPool, &pool); err != nil || len(pool.Spec.Allocations) != 0 {
		t.Errorf("pool allocations after the VM's deletion %v (%v), want none", pool.Spec.Allocations, err)
	}
	if err := f.c.Get(context.Background(), f.key, &vmv1.VirtualMachine{}); !apierrors.IsNotFound(err) {
		t.Errorf("VM after deletion: %v, want gone", err)
	}
}

func TestVMReconcilerExtraNetworkWithoutIPAM(t *testing.T) {
	vm := newTestVM("noipam")
	vm.Spec.ExtraNetwork = &vmv1.ExtraNetwork{Enable: true, Interface: "net1"}
	f := newVMFixture(t, vm, matching(vm))
	f.reconcile()
	got := f.vm()
	if got.Status.Phase != vmv1.VmPending || got.Status.ExtraNetIP != "" {
		t.Errorf("phase %q address %q, want Pending without an address", got.Status.Phase, got.Status.ExtraNetIP)
	}
	c := meta.FindStatusCondition(got.Status.Conditions, ConditionExtraNetwork)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonExtraNetIPAMDisabled {
		t.Errorf("condition = %+v, want False/%s", c, ReasonExtraNetIPAMDisabled)
	}
}

// A long report keeps its first lines and the end of QEMU's output in an
// event's note.
func TestClipReport(t *testing.T) {
	out := make([]string, 200)
	for i := range out {
		out[i] = fmt.Sprintf("[ %3d.0] console line", i)
	}
	out = append(out, "Kernel panic - not syncing: Attempted to kill init!")
	report := "QEMU exited with status 0: the guest reset itself\nlast QMP events: RESET\nlast output:\n" + strings.Join(out, "\n")
	got := clipReport(report, maxEventNote)
	if len(got) > maxEventNote {
		t.Errorf("clipped to %d bytes, want at most %d", len(got), maxEventNote)
	}
	if !strings.HasPrefix(got, "QEMU exited with status 0: the guest reset itself\nlast QMP events: RESET\nlast output:\n…\n") ||
		!strings.HasSuffix(got, "\nKernel panic - not syncing: Attempted to kill init!") {
		t.Errorf("clipped report:\n%s", got)
	}
	if short := "QEMU exited with status 0"; clipReport(short, maxEventNote) != short {
		t.Error("a short report was changed")
	}
}
