package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
	"github.com/vmscale/vmscale/tests/poll"
)

func getVM(t *testing.T, ns, name string) *vmv1.VirtualMachine {
	t.Helper()
	vm := &vmv1.VirtualMachine{}
	if err := k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// waitPod waits until the VM has a runner pod and returns both.
func waitPod(t *testing.T, ns, name string) (*vmv1.VirtualMachine, *corev1.Pod) {
	t.Helper()
	var vm *vmv1.VirtualMachine
	pod := &corev1.Pod{}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "runner pod of "+name, func() error {
		vm = getVM(t, ns, name)
		if vm.Status.PodName == "" {
			return fmt.Errorf("no status.podName yet (phase %q)", vm.Status.Phase)
		}
		return k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: vm.Status.PodName}, pod)
	})
	return vm, pod
}

// Every compat VirtualMachine gets a finalizer, the Pending phase, its pod
// name persisted, an SSH secret, and exactly the runner pod the pure
// function gives for it.
func TestVMControllerCreatesRunnerPods(t *testing.T) {
	ns := newNamespace(t, "vm-controller")
	files, _ := filepath.Glob(filepath.Join(repoRoot, "testdata", "compat", "manifests", "*.yaml"))
	n := 0
	for _, f := range files {
		for _, obj := range readManifests(t, f) {
			if obj.GetKind() != "VirtualMachine" {
				continue
			}
			obj.SetNamespace(ns)
			obj.SetName(fmt.Sprintf("%s-%d", obj.GetName(), n))
			if err := k8sClient.Create(context.Background(), obj); err != nil {
				t.Fatalf("%s: %v", filepath.Base(f), err)
			}
			vm, pod := waitPod(t, ns, obj.GetName())
			n++
			if vm.Status.Phase != vmv1.VmPending {
				t.Errorf("%s: phase %s, want Pending (no kubelet runs the pod)", vm.Name, vm.Status.Phase)
			}
			if !reflect.DeepEqual(vm.Finalizers, []string{vmv1.VirtualMachineFinalizer}) {
				t.Errorf("%s: finalizers %v", vm.Name, vm.Finalizers)
			}
			if c := meta.FindStatusCondition(vm.Status.Conditions, "Available"); c == nil {
				t.Errorf("%s: no Available condition", vm.Name)
			}
			want, err := podspec.RunnerPod(vm, vm.Status.PodName, testSettings, false)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pod.Labels, want.Labels) || !reflect.DeepEqual(pod.Annotations, want.Annotations) {
				t.Errorf("%s: pod metadata differs:\n got %v %v\nwant %v %v", vm.Name, pod.Labels, pod.Annotations, want.Labels, want.Annotations)
			}
			if got, exp := pod.Spec.Containers[0].Args, want.Spec.Containers[0].Args; !reflect.DeepEqual(got, exp) {
				t.Errorf("%s: runner args differ:\n got %v\nwant %v", vm.Name, got, exp)
			}
			if !reflect.DeepEqual(pod.Spec.Volumes, want.Spec.Volumes) && len(pod.Spec.Volumes) != len(want.Spec.Volumes) {
				t.Errorf("%s: volumes %v, want %v", vm.Name, pod.Spec.Volumes, want.Spec.Volumes)
			}
			if owner := pod.OwnerReferences; len(owner) != 1 || owner[0].UID != vm.UID || owner[0].Controller == nil || !*owner[0].Controller {
				t.Errorf("%s: pod owners %v", vm.Name, owner)
			}
			if vm.Status.SSHSecretName != "" {
				var s corev1.Secret
				if err := k8sClient.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: vm.Status.SSHSecretName}, &s); err != nil {
					t.Errorf("%s: SSH secret: %v", vm.Name, err)
				} else if s.Type != corev1.SecretTypeSSHAuth || len(s.Data["ssh-publickey"]) == 0 || len(s.Data["ssh-privatekey"]) == 0 {
					t.Errorf("%s: SSH secret type %s keys %d", vm.Name, s.Type, len(s.Data))
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no compat VirtualMachines")
	}
}

func smallVM(ns, name string) *vmv1.VirtualMachine {
	var vm vmv1.VirtualMachine
	raw := fmt.Sprintf(`{"apiVersion":"vm.neon.tech/v1","kind":"VirtualMachine","metadata":{"name":%q,"namespace":%q,
		"annotations":{"team":"a"},"labels":{"app":"db"}},
		"spec":{"restartPolicy":"Always","guest":{"cpus":{"min":1,"max":2,"use":1},"memorySlotSize":"256Mi",
		"memorySlots":{"min":2,"max":4,"use":2},"rootDisk":{"image":"vmscale/vm-postgres:test"}}}}`, name, ns)
	if err := json.Unmarshal([]byte(raw), &vm); err != nil {
		panic(err)
	}
	return &vm
}

// The pod's labels and annotations follow the VM's (the usage annotation
// included), keeping the network's own annotations.
func TestVMControllerResyncsPodMetadata(t *testing.T) {
	ns := newNamespace(t, "vm-resync")
	ctx := context.Background()
	if err := k8sClient.Create(ctx, smallVM(ns, "db")); err != nil {
		t.Fatal(err)
	}
	vm, pod := waitPod(t, ns, "db")
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Annotations["k8s.v1.cni.cncf.io/network-status"] = "[]"
	pod.Annotations["stray"] = "x"
	if err := k8sClient.Patch(ctx, pod, patch); err != nil {
		t.Fatal(err)
	}
	vmPatch := client.MergeFrom(vm.DeepCopy())
	vm.Annotations["team"] = "b"
	vm.Labels["tier"] = "gold"
	vm.Spec.Guest.CPUs.Use = 2000
	if err := k8sClient.Patch(ctx, vm, vmPatch); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "pod metadata re-synced", func() error {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
		a, l := pod.Annotations, pod.Labels
		switch {
		case a["team"] != "b" || l["tier"] != "gold":
			return fmt.Errorf("VM changes not there: %v %v", a, l)
		case a["stray"] != "":
			return fmt.Errorf("a key the VM does not have stays: %v", a)
		case a["k8s.v1.cni.cncf.io/network-status"] != "[]":
			return fmt.Errorf("the network's annotation was removed: %v", a)
		case a[vmv1.VirtualMachineUsageAnnotation] != `{"cpu":2,"memory":"512Mi"}`:
			return fmt.Errorf("usage %s", a[vmv1.VirtualMachineUsageAnnotation])
		}
		return nil
	})
}

// A runner pod that fails restarts the VM (restartPolicy Always): the pod
// is deleted, restartCount counts it, and a new pod with a new name comes.
func TestVMControllerRestartsFailedVM(t *testing.T) {
	ns := newNamespace(t, "vm-restart")
	ctx := context.Background()
	if err := k8sClient.Create(ctx, smallVM(ns, "db")); err != nil {
		t.Fatal(err)
	}
	_, pod := waitPod(t, ns, "db")
	first := pod.Name
	pod.Status.Phase = corev1.PodFailed
	if err := k8sClient.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "restart", func() error {
		vm := getVM(t, ns, "db")
		if vm.Status.RestartCount != 1 || vm.Status.PodName == "" || vm.Status.PodName == first {
			return fmt.Errorf("restartCount %d, pod %q (first %s), phase %s", vm.Status.RestartCount, vm.Status.PodName, first, vm.Status.Phase)
		}
		return nil
	})
	waitPod(t, ns, "db")
	// The failed pod was deleted (envtest runs no kubelet: the object
	// stays with a deletion timestamp until its grace period, or goes).
	var old corev1.Pod
	err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: first}, &old)
	if err == nil && old.DeletionTimestamp == nil {
		t.Errorf("the failed pod %s was not deleted", first)
	} else if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(getVM(t, ns, "db").Status.Conditions, "Available"); c == nil || c.Status == "True" {
		t.Errorf("Available = %+v while the new pod is pending", c)
	}
}

// spec.extraNetwork: the VM gets an address from the IPPool before its
// pod, recorded in its status with ExtraNetworkReady=True; the pod asks
// Multus for the network and carries the address to the runner; deleting
// the VM gives the address back.
func TestVMControllerAllocatesExtraNetwork(t *testing.T) {
	ns := newNamespace(t, "vm-extranet")
	ctx := context.Background()
	vm := smallVM(ns, "db")
	vm.Spec.ExtraNetwork = &vmv1.ExtraNetwork{Enable: true}
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	vm, pod := waitPod(t, ns, "db")
	c := meta.FindStatusCondition(vm.Status.Conditions, "ExtraNetworkReady")
	if c == nil || c.Status != "True" || c.Reason != "Allocated" {
		t.Fatalf("ExtraNetworkReady = %+v", c)
	}
	ip, err := netip.ParseAddr(vm.Status.ExtraNetIP)
	if err != nil || !netip.MustParsePrefix("10.100.0.0/16").Contains(ip) || vm.Status.ExtraNetMask != "255.255.0.0" {
		t.Fatalf("status.extraNetIP %q extraNetMask %q", vm.Status.ExtraNetIP, vm.Status.ExtraNetMask)
	}
	if got := pod.Annotations["k8s.v1.cni.cncf.io/networks"]; got != "neonvm-system/neonvm-overlay-net@net1" {
		t.Errorf("pod networks annotation %q", got)
	}
	var st vmv1.VirtualMachineStatus
	if err := runnerapi.DecodeSpec(argAfter(pod.Spec.Containers[0].Args, "-vmstatus"), &st); err != nil || st.ExtraNetIP != vm.Status.ExtraNetIP {
		t.Errorf("the runner's -vmstatus has extraNetIP %q (%v), want %s", st.ExtraNetIP, err, vm.Status.ExtraNetIP)
	}
	if holder := poolHolder(t, suiteIPPool, vm.Status.ExtraNetIP); holder.ContainerID != string(vm.UID) || holder.PodRef != ns+"/db" {
		t.Errorf("the pool has %s held by %+v, want the VM (%s)", vm.Status.ExtraNetIP, holder, vm.UID)
	}
	if err := k8sClient.Delete(ctx, vm); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "address released", func() error {
		if h := poolHolder(t, suiteIPPool, vm.Status.ExtraNetIP); h.ContainerID == string(vm.UID) {
			return fmt.Errorf("%s still held by the deleted VM", vm.Status.ExtraNetIP)
		}
		return nil
	})
}

// A migration that cannot start says why: an unknown VM fails it, a VM
// that is not Running keeps it waiting with a condition naming the phase.
func TestMigrationThatCannotStart(t *testing.T) {
	ns := newNamespace(t, "vm-migrate-bad")
	ctx := context.Background()
	cond := func(name string) (string, *metav1.Condition) {
		var m vmv1.VirtualMachineMigration
		if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &m); err != nil {
			t.Fatal(err)
		}
		return string(m.Status.Phase), meta.FindStatusCondition(m.Status.Conditions, "Ready")
	}
	// The VM first: a migration reconciled before its VM exists fails
	// (VMNotFound), which is the other case.
	if err := k8sClient.Create(ctx, smallVM(ns, "db")); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*vmv1.VirtualMachineMigration{
		{ObjectMeta: metav1.ObjectMeta{Name: "to-nowhere", Namespace: ns}, Spec: vmv1.VirtualMachineMigrationSpec{VMName: "nope"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "too-early", Namespace: ns}, Spec: vmv1.VirtualMachineMigrationSpec{VMName: "db"}},
	} {
		if err := k8sClient.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "unknown VM fails the migration", func() error {
		phase, c := cond("to-nowhere")
		if phase != "Failed" || c == nil || c.Reason != "VMNotFound" {
			return fmt.Errorf("phase %q condition %+v", phase, c)
		}
		return nil
	})
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "a Pending VM keeps the migration waiting", func() error {
		phase, c := cond("too-early")
		if phase != "" || c == nil || c.Reason != "VMNotRunning" {
			return fmt.Errorf("phase %q condition %+v", phase, c)
		}
		return nil
	})
	// Deleting a migration that never started leaves nothing behind.
	if err := k8sClient.Delete(ctx, &vmv1.VirtualMachineMigration{ObjectMeta: metav1.ObjectMeta{Name: "too-early", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "migration deleted", func() error {
		var m vmv1.VirtualMachineMigration
		err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "too-early"}, &m)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v), finalizers %v", err, m.Finalizers)
	})
}
