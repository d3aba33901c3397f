package integration

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/pkg/api"
)

// Permit throughput and latency against the real apiserver, with 1,000 VM
// runner pods placed by the autoscale-scheduler on 100 nodes. Three phases,
// each a fixed time with 64 concurrent agents (one request in flight per
// VM, as a real agent does):
//   - steady: every request repeats the last permit (no grant, no write);
//   - mix: 80 % steady, 20 % upscales by one compute unit (each a grant:
//     one request patch, one approval patch);
//   - upscales alone.
//
// It takes about a minute; set VMSCALE_PLUGIN_BENCH=1 to run it.
func TestPermitThroughput(t *testing.T) {
	if os.Getenv("VMSCALE_PLUGIN_BENCH") == "" {
		t.Skip("permit benchmark against the real apiserver: set VMSCALE_PLUGIN_BENCH=1 (about a minute)")
	}
	nodes, vmsPerNode, agents := 100, 10, 32
	phase := 10 * time.Second
	if os.Getenv("VMSCALE_PLUGIN_BENCH") == "small" {
		nodes, vmsPerNode, agents, phase = 2, 4, 2, 2*time.Second
	}
	if a, err := strconv.Atoi(os.Getenv("VMSCALE_PLUGIN_BENCH_AGENTS")); err == nil && a > 0 {
		agents = a
	}
	sched := startScheduler(t)
	ns := newNamespace(t, fresh("plugin-bench"))
	t.Cleanup(func() { deleteAllIn(t, ns) })

	start := time.Now()
	if err := parallel(16, nodes, func(i int) error { return benchNode(fmt.Sprintf("bench-%03d", i)) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < nodes; i++ {
			_ = k8sClient.Delete(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%03d", i)}})
		}
	})
	nodesDone := time.Since(start)
	start = time.Now()
	n := nodes * vmsPerNode
	// Each node gets exactly vmsPerNode VMs (the plugin's score would pack
	// them instead, leaving no room to grow on the full nodes).
	if err := parallel(16, n, func(i int) error {
		return benchVM(ns, fmt.Sprintf("vm-%04d", i), fmt.Sprintf("bench-%03d", i%nodes))
	}); err != nil {
		t.Fatal(err)
	}
	created := time.Since(start)
	eventually(t, 5*time.Minute, "all runner pods bound", func() error {
		var pods corev1.PodList
		if err := k8sClient.List(context.Background(), &pods, client.InNamespace(ns)); err != nil {
			return err
		}
		bound := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		if bound != n {
			return fmt.Errorf("%d of %d bound", bound, n)
		}
		return nil
	})
	placed := time.Since(start)
	report(t, "setup: %d nodes in %s; %d VMs + runner pods created in %s, all bound by the autoscale-scheduler %s after the first",
		nodes, nodesDone.Round(time.Millisecond), n, created.Round(time.Millisecond), placed.Round(time.Millisecond))

	permits := make([]api.Resources, n)
	upscales := make([]int, n)
	for i := range permits {
		permits[i] = res(250, gib)
	}
	// Warm-up: each agent's first request records the scaling unit and
	// request on its VM (one write each), as after a fresh deployment.
	start = time.Now()
	if err := parallel(agents, n, func(i int) error {
		last := permits[i]
		reply, err := postPermit(sched.permitURL, agentRequest(ns, fmt.Sprintf("vm-%04d-runner", i), last, &last))
		if err == nil && reply.status != 200 {
			err = fmt.Errorf("vm-%04d: %d %s", i, reply.status, reply.body)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	report(t, "warm-up: first request of %d agents (one VM write each) in %s; load average %s", n, time.Since(start).Round(time.Millisecond), loadavg())
	// Where an upscale's time goes: one JSON patch of a VM (through the
	// VM admission webhooks) against one of a pod (none), sequentially, on
	// an otherwise idle plugin.
	for _, target := range []client.Object{&vmv1.VirtualMachine{}, &corev1.Pod{}} {
		name := fmt.Sprintf("vm-%04d", n-1)
		if _, ok := target.(*corev1.Pod); ok {
			name += "-runner"
		}
		target.SetNamespace(ns)
		target.SetName(name)
		const k = 50
		t0 := time.Now()
		for j := 0; j < k; j++ {
			patch := client.RawPatch("application/json-patch+json",
				[]byte(fmt.Sprintf(`[{"op":"add","path":"/metadata/annotations/bench","value":"%d"}]`, j)))
			if err := k8sClient.Patch(context.Background(), target, patch); err != nil {
				t.Fatal(err)
			}
		}
		report(t, "one JSON patch of a %T, sequential: mean %s", target, (time.Since(t0) / k).Round(10*time.Microsecond))
	}
	// The apiserver's ceiling for such writes here: agents writers patching
	// distinct VMs (and, for comparison, their pods) as fast as they can,
	// with no plugin involved.
	for _, kind := range []string{"VirtualMachine", "Pod"} {
		var count int64
		var mu sync.Mutex
		deadline := time.Now().Add(phase / 2)
		var wg sync.WaitGroup
		for w := 0; w < agents; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				var obj client.Object = &vmv1.VirtualMachine{}
				name := fmt.Sprintf("vm-%04d", w%n)
				if kind == "Pod" {
					obj, name = &corev1.Pod{}, name+"-runner"
				}
				obj.SetNamespace(ns)
				obj.SetName(name)
				c := int64(0)
				for j := 0; time.Now().Before(deadline); j++ {
					patch := client.RawPatch("application/json-patch+json",
						[]byte(fmt.Sprintf(`[{"op":"add","path":"/metadata/annotations/bench","value":"%d"}]`, j)))
					if err := k8sClient.Patch(context.Background(), obj, patch); err == nil {
						c++
					}
				}
				mu.Lock()
				count += c
				mu.Unlock()
			}(w)
		}
		wg.Wait()
		report(t, "apiserver ceiling: %d concurrent %s patches: %.0f writes/s", agents, kind, float64(count)/(phase/2).Seconds())
	}
	run := func(name string, upscaleShare float64) {
		patchesBefore := patchStats(t, sched)
		var mu sync.Mutex
		lat := map[string][]time.Duration{}
		failures := 0
		reasons := map[string]int{}
		deadline := time.Now().Add(phase)
		var wg sync.WaitGroup
		for w := 0; w < agents; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(w)))
				mine := map[string][]time.Duration{}
				fails := 0
				why := map[string]int{}
				for j := 0; time.Now().Before(deadline); j++ {
					i := w + (j%(n/agents))*agents
					if i >= n {
						continue
					}
					last := permits[i]
					want, kind := last, "steady"
					// Each VM grows at most 5 units, so every upscale
					// has room (16 vCPU nodes) and really is a grant.
					if rng.Float64() < upscaleShare && upscales[i] < 5 {
						want, kind = res(uint32(last.VCPU)+250, last.Mem+gib), "upscale"
					}
					body := agentRequest(ns, fmt.Sprintf("vm-%04d-runner", i), want, &last)
					t0 := time.Now()
					reply, err := postPermit(sched.permitURL, body)
					d := time.Since(t0)
					if err != nil || reply.status != 200 || reply.permit != want {
						fails++
						switch {
						case err != nil:
							why[err.Error()]++
						case reply.status != 200:
							why[fmt.Sprintf("%d %.120s", reply.status, reply.body)]++
						default:
							why[fmt.Sprintf("%s asked %v got %v", kind, want, reply.permit)]++
							if fails == 1 && w == 0 {
								vm := getVM(t, ns, fmt.Sprintf("vm-%04d", i))
								node, _ := podNode(ns, fmt.Sprintf("vm-%04d-runner", i))
								rsv, _ := sched.metric(fmt.Sprintf(`vmscale_plugin_node_reserved{node=%q,resource="cpu"}`, node))
								tot, _ := sched.metric(fmt.Sprintf(`vmscale_plugin_node_total{node=%q,resource="cpu"}`, node))
								t.Logf("first refusal: vm-%04d on %s (cpu %v of %v): annotations %v", i, node, rsv, tot, vm.Annotations)
							}
						}
						continue
					}
					permits[i] = reply.permit
					if kind == "upscale" {
						upscales[i]++
					}
					mine[kind] = append(mine[kind], d)
				}
				mu.Lock()
				for k, v := range mine {
					lat[k] = append(lat[k], v...)
				}
				failures += fails
				for k, v := range why {
					reasons[k] += v
				}
				mu.Unlock()
			}(w)
		}
		wg.Wait()
		var all []time.Duration
		for _, v := range lat {
			all = append(all, v...)
		}
		report(t, "%-9s %6d requests in %s = %6.0f/s  p50 %-8s p99 %-8s failures %d", name, len(all), phase,
			float64(len(all))/phase.Seconds(), pct(all, 50), pct(all, 99), failures)
		for _, k := range []string{"steady", "upscale"} {
			if v := lat[k]; len(v) > 0 {
				report(t, "  %-7s %6d (%5.1f%%) = %6.0f/s  p50 %-8s p99 %s", k, len(v), 100*float64(len(v))/float64(len(all)),
					float64(len(v))/phase.Seconds(), pct(v, 50), pct(v, 99))
			}
		}
		after := patchStats(t, sched)
		for _, kind := range []string{"request", "approval"} {
			c := after[kind+"_count"] - patchesBefore[kind+"_count"]
			if c > 0 {
				report(t, "  VM %-8s patches: %5.0f, mean %s", kind, c,
					time.Duration(float64(time.Second)*(after[kind+"_sum"]-patchesBefore[kind+"_sum"])/c).Round(10*time.Microsecond))
			}
		}
		report(t, "  load average after: %s", loadavg())
		if failures > 0 {
			t.Errorf("%s: %d failed requests: %v", name, failures, reasons)
		}
	}
	run("steady", 0)
	run("mix80/20", 0.2)
	run("upscales", 1)
}

func benchNode(name string) error {
	ctx := context.Background()
	alloc := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("64Gi"),
		corev1.ResourcePods: resource.MustParse("110")}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"vmscale-test": "bench", "kubernetes.io/hostname": name,
			"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
		Status: corev1.NodeStatus{Capacity: alloc, Allocatable: alloc},
	}
	if err := k8sClient.Create(ctx, n); err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	if len(n.Spec.Taints) > 0 {
		n.Spec.Taints = nil
		if err := k8sClient.Update(ctx, n); err != nil {
			return fmt.Errorf("untaint node %s: %w", name, err)
		}
	}
	return nil
}

func benchVM(ns, name, node string) error {
	ctx := context.Background()
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"autoscaling.neon.tech/enabled": "true"}}}
	vm.Spec.SchedulerName = schedulerName
	vm.Spec.NodeSelector = map[string]string{"vmscale-test": "bench", "kubernetes.io/hostname": node}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 4000, Use: 250}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 16, Use: 1}
	vm.Spec.Guest.RootDisk.Image = "vm-postgres:15"
	if err := k8sClient.Create(ctx, vm); err != nil {
		return fmt.Errorf("create VM %s: %w", name, err)
	}
	pod, err := podspec.RunnerPod(vm, name+"-runner", podspec.Settings{RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}}, false)
	if err != nil {
		return err
	}
	if err := k8sClient.Create(ctx, pod); err != nil {
		return fmt.Errorf("create pod %s: %w", pod.Name, err)
	}
	vm.Status.PodName, vm.Status.Phase = pod.Name, vmv1.VmRunning
	if err := k8sClient.Status().Update(ctx, vm); err != nil {
		return fmt.Errorf("VM %s status: %w", name, err)
	}
	return nil
}

func parallel(workers, n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	return <-errs
}

// patchStats reads the plugin's VM patch histograms (sum and count per kind).
func patchStats(t *testing.T, s *scheduler) map[string]float64 {
	out := map[string]float64{}
	for _, kind := range []string{"request", "approval"} {
		for _, what := range []string{"sum", "count"} {
			v, err := s.metric(fmt.Sprintf(`vmscale_plugin_vm_patch_duration_seconds_%s{kind=%q}`, what, kind))
			if err == nil {
				out[kind+"_"+what] = v
			}
		}
	}
	return out
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i].Round(10 * time.Microsecond)
}

func report(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Println("plugin-bench:", line)
}

func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
