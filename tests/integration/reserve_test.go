package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// Runner pods created in a burst, each with its labels and annotations
// re-synced a few times right after creation (as the neonvm-controller does)
// while the scheduler places it, plus pods pinned next to them by a required
// podAffinity. Under such a burst the plugin's pod watch trails the
// scheduler's, so Reserve often comes for a pod the plugin has not seen yet,
// with the scheduler's assumed copy naming the node. Every pod gets placed,
// no scheduling attempt fails in the plugin, and the plugin's per-node
// accounting is exactly the pods bound there.
func TestReserveUnderPodUpdates(t *testing.T) {
	sched := startScheduler(t)
	ns := newNamespace(t, fresh("plugin-reserve"))
	t.Cleanup(func() { deleteAllIn(t, ns) })
	nodes := []string{"resv-1", "resv-2", "resv-3"}
	for _, n := range nodes {
		createNode(t, n, "resv", "64", "256Gi")
	}

	const vms, followers, patches, workers = 60, 20, 4, 16
	var pods []string
	errs := make(chan error, vms+followers)
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("vm-%d", i)
				if err := createVMAndResync(ns, name, name+"-runner", patches); err != nil {
					errs <- err
				}
				if i < followers {
					if err := createFollower(ns, fmt.Sprintf("follower-%d", i), name); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	for i := 0; i < vms; i++ {
		work <- i
		pods = append(pods, fmt.Sprintf("vm-%d-runner", i))
		if i < followers {
			pods = append(pods, fmt.Sprintf("follower-%d", i))
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	bound := map[string]string{}
	deadline := time.Now().Add(60 * time.Second)
	for len(bound) < len(pods) && time.Now().Before(deadline) {
		for _, p := range pods {
			if bound[p] != "" {
				continue
			}
			if node, err := podNode(ns, p); err == nil && node != "" {
				bound[p] = node
			}
		}
		time.Sleep(200 * time.Millisecond)
	}

	var events corev1.EventList
	if err := k8sClient.List(context.Background(), &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	// A follower may find its VM's pod not yet placed (pod affinity); the
	// plugin must never fail an attempt.
	failed := map[string]bool{}
	for _, ev := range events.Items {
		if ev.Reason == "FailedScheduling" && strings.Contains(ev.Message, "AutoscaleEnforcer") {
			t.Errorf("event on %s: %s", ev.InvolvedObject.Name, ev.Message)
			failed[ev.InvolvedObject.Name] = true
		}
	}
	if raw, err := os.ReadFile(sched.logPath); err == nil && len(failed) > 0 {
		for _, line := range strings.Split(string(raw), "\n") {
			for p := range failed {
				if strings.Contains(line, ns+"/"+p+"\"") || strings.Contains(line, ns+"/"+p+" ") {
					t.Logf("scheduler log: %s", line)
				}
			}
		}
	}
	if len(bound) < len(pods) {
		t.Fatalf("%d of %d pods bound after 60s", len(bound), len(pods))
	}
	for i := 0; i < followers; i++ {
		if f, vm := bound[fmt.Sprintf("follower-%d", i)], bound[fmt.Sprintf("vm-%d-runner", i)]; f != vm {
			t.Errorf("follower-%d on %s, its VM's pod on %s", i, f, vm)
		}
	}

	// Each runner pod asks for 250m (vm-*), each follower 100m.
	want := map[string]float64{}
	for p, n := range bound {
		if strings.HasPrefix(p, "follower-") {
			want[n] += 0.1
		} else {
			want[n] += 0.25
		}
	}
	eventually(t, 10*time.Second, "plugin accounting matches bindings", func() error {
		for _, n := range nodes {
			v, err := sched.metric(fmt.Sprintf(`vmscale_plugin_node_reserved{node=%q,resource="cpu"}`, n))
			if err != nil {
				return err
			}
			if d := v - want[n]; d > 1e-6 || d < -1e-6 {
				return fmt.Errorf("node %s: plugin holds %g vCPU, pods bound there ask %g", n, v, want[n])
			}
		}
		return nil
	})
}

// createVMAndResync creates a VM and its runner pod as the controller does,
// then re-syncs the pod's metadata several times at once, racing the
// scheduler's placement.
func createVMAndResync(ns, name, podName string, patches int) error {
	ctx := context.Background()
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{"autoscaling.neon.tech/enabled": "true"}}}
	vm.Spec.SchedulerName = schedulerName
	vm.Spec.NodeSelector = map[string]string{"vmscale-test": "resv"}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 4000, Use: 250}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 16, Use: 1}
	vm.Spec.Guest.RootDisk.Image = "vm-postgres:15"
	if err := k8sClient.Create(ctx, vm); err != nil {
		return fmt.Errorf("create VM %s: %w", name, err)
	}
	pod, err := podspec.RunnerPod(vm, podName, podspec.Settings{RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}}, false)
	if err != nil {
		return err
	}
	pod.Labels["app"] = name
	if err := k8sClient.Create(ctx, pod); err != nil {
		return fmt.Errorf("create runner pod %s: %w", podName, err)
	}
	for i := 0; i < patches; i++ {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"vmscale-test/resync":"%d"},"annotations":{"vmscale-test/resync":"%d"}}}`, i, i)
		if err := k8sClient.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName}},
			client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
			return fmt.Errorf("re-sync %s: %w", podName, err)
		}
	}
	vm.Status.PodName, vm.Status.Phase = podName, vmv1.VmRunning
	if err := k8sClient.Status().Update(ctx, vm); err != nil {
		return fmt.Errorf("VM %s status: %w", name, err)
	}
	return nil
}

// createFollower creates a plain pod that must run next to app=<app>.
func createFollower(ns, name, app string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			SchedulerName: schedulerName,
			NodeSelector:  map[string]string{"vmscale-test": "resv"},
			Affinity: &corev1.Affinity{PodAffinity: &corev1.PodAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
					LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
					TopologyKey:   "kubernetes.io/hostname",
				}},
			}},
			Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}}}},
		},
	}
	if err := k8sClient.Create(context.Background(), pod); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}
