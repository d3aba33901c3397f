package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// The migration reconciler's phases up to the QEMU transfer run here; the
// transfer itself needs two runners (tests/cluster). Pods without an IP
// keep every QMP call from dialling: it fails at once with "no pod IP".

type migrationFixture struct {
	t      *testing.T
	c      client.WithWatch
	r      *MigrationReconciler
	events *events.FakeRecorder
	key    types.NamespacedName
	vmKey  types.NamespacedName
}

func newMigration(vmName string) *vmv1.VirtualMachineMigration {
	return &vmv1.VirtualMachineMigration{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "move-" + vmName, UID: "uid-move-" + types.UID(vmName)},
		Spec:       vmv1.VirtualMachineMigrationSpec{VMName: vmName},
	}
}

func newMigrationFixture(t *testing.T, m *vmv1.VirtualMachineMigration, objs ...client.Object) *migrationFixture {
	t.Helper()
	c := newFakeClient(t, append([]client.Object{m}, objs...)...)
	rec := events.NewFakeRecorder(100)
	return &migrationFixture{
		t: t, c: c, events: rec,
		key:   client.ObjectKeyFromObject(m),
		vmKey: types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMName},
		r: &MigrationReconciler{
			Client: c, Recorder: rec, Settings: unitSettings,
			Now: func() time.Time { return testNow },
		},
	}
}

func (f *migrationFixture) reconcile() ctrl.Result {
	f.t.Helper()
	return mustReconcile(f.t, f.r, f.key)
}

func (f *migrationFixture) migration() *vmv1.VirtualMachineMigration {
	f.t.Helper()
	return mustGet(f.t, f.c, f.key, &vmv1.VirtualMachineMigration{})
}

func (f *migrationFixture) vm() *vmv1.VirtualMachine {
	f.t.Helper()
	return mustGet(f.t, f.c, f.vmKey, &vmv1.VirtualMachine{})
}

func (f *migrationFixture) pod(name string) (*corev1.Pod, bool) {
	f.t.Helper()
	var pod corev1.Pod
	err := f.c.Get(context.Background(), types.NamespacedName{Namespace: f.key.Namespace, Name: name}, &pod)
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		f.t.Fatalf("get pod %s: %v", name, err)
	}
	return &pod, true
}

func assertMigration(t *testing.T, m *vmv1.VirtualMachineMigration, phase vmv1.VmmPhase, reason string) {
	t.Helper()
	if m.Status.Phase != phase {
		t.Errorf("migration phase = %q, want %q", m.Status.Phase, phase)
	}
	c := meta.FindStatusCondition(m.Status.Conditions, ConditionMigration)
	if c == nil || c.Reason != reason {
		t.Errorf("migration condition = %+v, want reason %s", c, reason)
	}
}

// startedMigration is a fixture whose migration of a running VM (its
// source pod without an IP) has made its target pod.
func startedMigration(t *testing.T, name string) (*migrationFixture, string) {
	t.Helper()
	vm, src := runningVM(name)
	vm.Status.PodIP, src.Status.PodIP = "", ""
	f := newMigrationFixture(t, newMigration(name), vm, src)
	f.reconcile() // start
	f.reconcile() // the target pod
	m := f.migration()
	assertMigration(t, m, vmv1.VmmPending, "TargetPodCreated")
	if _, ok := f.pod(m.Status.TargetPodName); !ok {
		t.Fatalf("no target pod %s", m.Status.TargetPodName)
	}
	return f, m.Status.TargetPodName
}

func TestMigrationReconcilerFailsForAMissingVM(t *testing.T) {
	f := newMigrationFixture(t, newMigration("absent"))
	f.reconcile()
	m := f.migration()
	assertMigration(t, m, vmv1.VmmFailed, "VMNotFound")
	if !controllerutil.ContainsFinalizer(m, vmv1.VirtualMachineMigrationFinalizer) {
		t.Errorf("finalizers = %v, want %s", m.Finalizers, vmv1.VirtualMachineMigrationFinalizer)
	}
	if r := drainReasons(f.events); !contains(r, "VMNotFound") {
		t.Errorf("events %v, want VMNotFound", r)
	}
}

func TestMigrationReconcilerWaitsForARunningVM(t *testing.T) {
	vm := newTestVM("starting")
	vm.Status.Phase = vmv1.VmPending
	f := newMigrationFixture(t, newMigration("starting"), vm)
	if res := f.reconcile(); res.RequeueAfter != 5*time.Second {
		t.Errorf("requeue = %v, want 5s", res.RequeueAfter)
	}
	m := f.migration()
	if m.Status.Phase != "" {
		t.Errorf("phase = %q, want none yet", m.Status.Phase)
	}
	c := meta.FindStatusCondition(m.Status.Conditions, ConditionMigration)
	if c == nil || c.Reason != "VMNotRunning" || c.Status != metav1.ConditionFalse {
		t.Errorf("condition = %+v, want VMNotRunning", c)
	}
	if p := f.vm().Status.Phase; p != vmv1.VmPending {
		t.Errorf("VM phase = %q, want it untouched", p)
	}
}

func TestMigrationReconcilerCreatesTheTargetPod(t *testing.T) {
	vm, src := runningVM("mover")
	f := newMigrationFixture(t, newMigration("mover"), vm, src)

	f.reconcile()
	m := f.migration()
	if owner := metav1.GetControllerOf(m); owner == nil || owner.UID != vm.UID {
		t.Errorf("migration controller = %+v, want the VM", owner)
	}
	st := m.Status
	if st.Phase != vmv1.VmmPending || st.SourcePodName != src.Name || st.SourcePodIP != "10.0.0.5" || st.SourceNode != "node-a" {
		t.Errorf("status after start = %+v", st)
	}
	if !strings.HasPrefix(st.TargetPodName, "mover-") || st.TargetPodName == src.Name {
		t.Errorf("target pod name = %q", st.TargetPodName)
	}
	if p := f.vm().Status.Phase; p != vmv1.VmPreMigrating {
		t.Errorf("VM phase = %q, want PreMigrating", p)
	}

	if res := f.reconcile(); res.RequeueAfter != time.Second {
		t.Errorf("requeue after creating the target = %v, want 1s", res.RequeueAfter)
	}
	target, ok := f.pod(st.TargetPodName)
	if !ok {
		t.Fatalf("no target pod %s", st.TargetPodName)
	}
	if owner := metav1.GetControllerOf(target); owner == nil || owner.UID != m.UID {
		t.Errorf("target pod controller = %+v, want the migration", owner)
	}
	if !hasOwner(target, vm.UID) {
		t.Errorf("target pod owners %+v, want the VM among them", target.OwnerReferences)
	}
	if !hasAntiAffinityTo(target, "mover") {
		t.Errorf("target pod may land on the source's node: %+v", target.Spec.Affinity)
	}
	source, _ := f.pod(src.Name)
	if !hasOwner(source, m.UID) {
		t.Errorf("source pod owners %+v, want the migration among them", source.OwnerReferences)
	}
	assertMigration(t, f.migration(), vmv1.VmmPending, "TargetPodCreated")

	// Not Ready yet: wait.
	if res := f.reconcile(); res.RequeueAfter != time.Second {
		t.Errorf("requeue with the target pending = %v, want 1s", res.RequeueAfter)
	}
	assertMigration(t, f.migration(), vmv1.VmmPending, "TargetPodCreated")
}

func TestMigrationReconcilerTargetPodFailure(t *testing.T) {
	for _, c := range []struct {
		name   string
		break_ func(f *migrationFixture, target *corev1.Pod)
		reason string
	}{
		{"target pod failed", func(f *migrationFixture, target *corev1.Pod) {
			target.Status.Phase = corev1.PodFailed
			if err := f.c.Status().Update(context.Background(), target); err != nil {
				f.t.Fatal(err)
			}
		}, "TargetPodFailed"},
		{"target pod deleted", func(f *migrationFixture, target *corev1.Pod) {
			if err := f.c.Delete(context.Background(), target); err != nil {
				f.t.Fatal(err)
			}
		}, "TargetPodFailed"},
		{"QEMU unreachable", func(f *migrationFixture, target *corev1.Pod) {
			runPod(f.t, f.c, target, "", "node-b")
		}, "StartFailed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, targetName := startedMigration(t, "fragile")
			target, _ := f.pod(targetName)
			c.break_(f, target)

			f.reconcile()
			assertMigration(t, f.migration(), vmv1.VmmFailed, c.reason)
			vm := f.vm()
			if vm.Status.Phase != vmv1.VmRunning || vm.Status.PodName != "fragile-pod" {
				t.Errorf("VM phase %q pod %q, want Running on its source", vm.Status.Phase, vm.Status.PodName)
			}

			// Failed: the target pod goes, the source stays.
			f.reconcile()
			if _, ok := f.pod(targetName); ok {
				t.Errorf("target pod %s kept after the migration failed", targetName)
			}
			if _, ok := f.pod("fragile-pod"); !ok {
				t.Error("source pod deleted")
			}
		})
	}
}

func TestMigrationReconcilerFinishesASwitchedVM(t *testing.T) {
	f, targetName := startedMigration(t, "switched")
	// A previous pass pointed the VM at the target and stopped before
	// recording it.
	m := f.migration()
	m.Status.Phase = vmv1.VmmRunning
	if err := f.c.Status().Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	vm := f.vm()
	vm.Status.PodName, vm.Status.Phase = targetName, vmv1.VmRunning
	if err := f.c.Status().Update(context.Background(), vm); err != nil {
		t.Fatal(err)
	}

	f.reconcile()
	assertMigration(t, f.migration(), vmv1.VmmSucceeded, "Succeeded")
	target, _ := f.pod(targetName)
	if owner := metav1.GetControllerOf(target); owner == nil || owner.UID != vm.UID {
		t.Errorf("target pod controller = %+v, want the VM", owner)
	}
	if r := drainReasons(f.events); !contains(r, "Succeeded") || !contains(r, "Migrated") {
		t.Errorf("events %v, want Succeeded and Migrated", r)
	}

	// Succeeded: the source pod goes.
	f.reconcile()
	if _, ok := f.pod("switched-pod"); ok {
		t.Error("source pod kept after the migration succeeded")
	}
	if _, ok := f.pod(targetName); !ok {
		t.Error("target pod deleted")
	}
}

func TestMigrationReconcilerCancelsWhenTheTargetDiesMidTransfer(t *testing.T) {
	f, targetName := startedMigration(t, "midway")
	m := f.migration()
	m.Status.Phase = vmv1.VmmRunning
	if err := f.c.Status().Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	target, _ := f.pod(targetName)
	if err := f.c.Delete(context.Background(), target); err != nil {
		t.Fatal(err)
	}

	f.reconcile()
	assertMigration(t, f.migration(), vmv1.VmmFailed, "TargetPodFailed")
	if vm := f.vm(); vm.Status.Phase != vmv1.VmRunning || vm.Status.PodName != "midway-pod" {
		t.Errorf("VM phase %q pod %q, want Running on its source", vm.Status.Phase, vm.Status.PodName)
	}
}

func TestMigrationReconcilerFinalizesADeletedMigration(t *testing.T) {
	f, targetName := startedMigration(t, "cancelled")
	if err := f.c.Delete(context.Background(), f.migration()); err != nil {
		t.Fatal(err)
	}

	f.reconcile()
	if err := f.c.Get(context.Background(), f.key, &vmv1.VirtualMachineMigration{}); !apierrors.IsNotFound(err) {
		t.Errorf("migration after finalizing: %v, want gone", err)
	}
	if _, ok := f.pod(targetName); ok {
		t.Errorf("target pod %s kept after the migration was deleted", targetName)
	}
	if vm := f.vm(); vm.Status.Phase != vmv1.VmRunning || vm.Status.PodName != "cancelled-pod" {
		t.Errorf("VM phase %q pod %q, want Running on its source", vm.Status.Phase, vm.Status.PodName)
	}
	if r := drainReasons(f.events); !contains(r, "MigrationCancelled") {
		t.Errorf("events %v, want MigrationCancelled", r)
	}
}

func hasOwner(obj metav1.Object, uid types.UID) bool {
	for _, o := range obj.GetOwnerReferences() {
		if o.UID == uid {
			return true
		}
	}
	return false
}

func hasAntiAffinityTo(pod *corev1.Pod, vmName string) bool {
	a := pod.Spec.Affinity
	if a == nil || a.PodAntiAffinity == nil {
		return false
	}
	for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
		if term.TopologyKey == "kubernetes.io/hostname" && term.LabelSelector != nil &&
			term.LabelSelector.MatchLabels[vmv1.VirtualMachineNameLabel] == vmName {
			return true
		}
	}
	return false
}
