package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/pkg/api"
)

// Permit throughput and latency against the real apiserver, with 1,000 VM
// runner pods placed by the autoscale-scheduler on 100 nodes (10 each), one
// request in flight per VM as a real agent does. First the apiserver's own
// ceiling for the writes an upscale costs (VM patches, and pod patches for
// comparison), then 10 s phases:
//   - steady, closed loop (32 agents): every request repeats the last
//     permit (no grant, no write);
//   - mix, closed loop: 80 % steady, 20 % upscales by one compute unit (each
//     a grant and one VM patch);
//   - mix, open loop at 500/s and 1,000/s offered;
//   - upscales alone, closed loop.
//
// It takes about two minutes; set VMSCALE_PLUGIN_BENCH=1 to run it
// (VMSCALE_PLUGIN_BENCH=small for a quick run on 2 nodes,
// VMSCALE_PLUGIN_BENCH_AGENTS to change the 32). The figures also go to the
// cache's bench/plugin.txt. Each phase also reports the CPU each process
// used per upscale and the apiserver's priority-and-fairness queueing;
// VMSCALE_PLUGIN_BENCH_PPROF=<dir> adds CPU profiles of the apiserver and
// the scheduler per phase.
func TestPermitThroughput(t *testing.T) {
	if os.Getenv("VMSCALE_PLUGIN_BENCH") == "" {
		t.Skip("permit benchmark against the real apiserver: set VMSCALE_PLUGIN_BENCH=1 (about two minutes)")
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
	var sample vmv1.VirtualMachine
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "vm-0000"}, &sample); err != nil {
		t.Fatal(err)
	}
	whole, _ := json.Marshal(&sample)
	managed, _ := json.Marshal(sample.ManagedFields)
	report(t, "a VM as stored: %d bytes of JSON, %d of them managedFields", len(whole), len(managed))
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
		stopProfile := profile(t, sched, "ceiling-"+kind, phase/2)
		cpuBefore := processCPU()
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
		stopProfile()
		report(t, "apiserver ceiling: %d concurrent %s patches: %.0f writes/s", agents, kind, float64(count)/(phase/2).Seconds())
		report(t, "  CPU: %s", strings.ReplaceAll(cpuPer(processCPU(), cpuBefore, int(count)), "upscale", "write"))
	}
	run := func(name string, upscaleShare float64) {
		defer profile(t, sched, strings.ReplaceAll(name, "/", "-"), phase)()
		patchesBefore := patchStats(t, sched)
		apfBefore := apfWait(t)
		cpuBefore := processCPU()
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
					// Each VM grows at most maxUpscales units, so every
					// upscale has room and really is a grant.
					if rng.Float64() < upscaleShare && upscales[i] < maxUpscales {
						want, kind = res(uint32(last.VCPU)+250, last.Mem+gib), "upscale"
					}
					body := agentRequest(ns, fmt.Sprintf("vm-%04d-runner", i), want, &last)
					t0 := time.Now()
					reply, err := postPermit(sched.permitURL, body)
					d := time.Since(t0)
					if c := classify(reply, err, want); c != "" {
						fails++
						why[c]++
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
		report(t, "  CPU: %s", cpuPer(processCPU(), cpuBefore, len(lat["upscale"])))
		report(t, "  apiserver: %s in priority-and-fairness queues; load average after: %s", apfWait(t)-apfBefore, loadavg())
		if failures > 0 {
			report(t, "  failed: %v", reasons)
		}
		checkFailures(t, name, upscaleShare, reasons)
	}
	// Open loop: requests go out at a fixed rate (to the next VM with no
	// request in flight), as many independent agents would send them, so
	// latency is measured at a given load rather than at saturation.
	runOpen := func(name string, rate int, upscaleShare float64) {
		defer profile(t, sched, fmt.Sprintf("%s-%d", strings.ReplaceAll(name, "/", "-"), rate), phase)()
		patchesBefore := patchStats(t, sched)
		apfBefore := apfWait(t)
		cpuBefore := processCPU()
		busy := make([]atomic.Bool, n)
		var mu sync.Mutex
		lat := map[string][]time.Duration{}
		failures, skipped, sent := 0, 0, 0
		reasons := map[string]int{}
		rng := rand.New(rand.NewSource(int64(rate)))
		var wg sync.WaitGroup
		t0 := time.Now()
		next := 0
		tick := time.NewTicker(2 * time.Millisecond)
		for now := range tick.C {
			el := now.Sub(t0)
			if el >= phase {
				break
			}
			for due := int(el.Seconds() * float64(rate)); sent < due; sent++ {
				i := -1
				for k := 0; k < n; k++ {
					if c := (next + k) % n; !busy[c].Load() {
						i = c
						break
					}
				}
				if i < 0 {
					skipped++
					continue
				}
				next = (i + 1) % n
				last := permits[i]
				want, kind := last, "steady"
				if rng.Float64() < upscaleShare && upscales[i] < maxUpscales {
					want, kind = res(uint32(last.VCPU)+250, last.Mem+gib), "upscale"
				}
				busy[i].Store(true)
				wg.Add(1)
				go func(i int, want, last api.Resources, kind string) {
					defer wg.Done()
					defer busy[i].Store(false)
					start := time.Now()
					reply, err := postPermit(sched.permitURL, agentRequest(ns, fmt.Sprintf("vm-%04d-runner", i), want, &last))
					d := time.Since(start)
					mu.Lock()
					defer mu.Unlock()
					if c := classify(reply, err, want); c != "" {
						failures++
						reasons[c]++
						return
					}
					permits[i] = reply.permit
					if kind == "upscale" {
						upscales[i]++
					}
					lat[kind] = append(lat[kind], d)
				}(i, want, last, kind)
			}
		}
		tick.Stop()
		wg.Wait()
		var all []time.Duration
		for _, v := range lat {
			all = append(all, v...)
		}
		report(t, "%-9s offered %d/s: %6d answered = %6.0f/s  p50 %-8s p99 %-8s failures %d, not sent (all agents busy) %d",
			name, rate, len(all), float64(len(all))/phase.Seconds(), pct(all, 50), pct(all, 99), failures, skipped)
		for _, k := range []string{"steady", "upscale"} {
			if v := lat[k]; len(v) > 0 {
				report(t, "  %-7s %6d (%5.1f%%)  p50 %-8s p99 %s", k, len(v), 100*float64(len(v))/float64(len(all)), pct(v, 50), pct(v, 99))
			}
		}
		report(t, "  CPU: %s", cpuPer(processCPU(), cpuBefore, len(lat["upscale"])))
		after := patchStats(t, sched)
		if c := after["request_count"] - patchesBefore["request_count"]; c > 0 {
			report(t, "  VM patches: %5.0f, mean %s; apiserver: %s in priority-and-fairness queues; load average after: %s", c,
				time.Duration(float64(time.Second)*(after["request_sum"]-patchesBefore["request_sum"])/c).Round(10*time.Microsecond),
				apfWait(t)-apfBefore, loadavg())
		}
		if failures > 0 {
			report(t, "  failed: %v", reasons)
		}
		checkFailures(t, fmt.Sprintf("%s at %d/s", name, rate), upscaleShare, reasons)
	}
	run("steady", 0)
	run("mix80/20", 0.2)
	runOpen("mix80/20", 500, 0.2)
	runOpen("mix80/20", 1000, 0.2)
	run("upscales", 1)
}

// processCPU is the CPU time used so far by this test process and each of
// its children (etcd, kube-apiserver, autoscale-scheduler), by command name.
func processCPU() map[string]time.Duration {
	out := map[string]time.Duration{}
	self := os.Getpid()
	stat := func(pid int) (name string, ppid int, cpu time.Duration, ok bool) {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return "", 0, 0, false
		}
		// pid (comm) state ppid ... utime(14) stime(15), in clock ticks
		// (100/s on Linux).
		open, end := strings.IndexByte(string(raw), '('), strings.LastIndexByte(string(raw), ')')
		if open < 0 || end < open {
			return "", 0, 0, false
		}
		f := strings.Fields(string(raw[end+2:]))
		if len(f) < 13 {
			return "", 0, 0, false
		}
		ppid, _ = strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return string(raw[open+1 : end]), ppid, time.Duration(ut+st) * 10 * time.Millisecond, true
	}
	if _, _, cpu, ok := stat(self); ok {
		out["test process"] = cpu
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if name, ppid, cpu, ok := stat(pid); ok && ppid == self {
			out[name] += cpu
		}
	}
	return out
}

// cpuPer says how much CPU each process used over a phase, per upscale.
func cpuPer(after, before map[string]time.Duration, upscales int) string {
	names := make([]string, 0, len(after))
	for k := range after {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		d := after[k] - before[k]
		part := fmt.Sprintf("%s %.2fs", k, d.Seconds())
		if upscales > 0 {
			part += fmt.Sprintf(" (%.1f ms/upscale)", float64(d.Microseconds())/1000/float64(upscales))
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, ", ")
}

// apfWait is the time requests have spent so far in the apiserver's
// priority-and-fairness queues (all flows): a benchmark's writes should not
// wait there.
func apfWait(t *testing.T) time.Duration {
	v := apiserverCounter(t, "apiserver_flowcontrol_request_wait_duration_seconds_sum", map[string]string{"execute": "true"})
	return time.Duration(v * float64(time.Second)).Round(time.Millisecond)
}

// profile takes CPU profiles of the kube-apiserver and of the
// autoscale-scheduler over the next d into $VMSCALE_PLUGIN_BENCH_PPROF
// ({apiserver,scheduler}-<name>.pprof) when that is set; the returned func
// waits for them.
func profile(t *testing.T, s *scheduler, name string, d time.Duration) func() {
	dir := os.Getenv("VMSCALE_PLUGIN_BENCH_PPROF")
	if dir == "" {
		return func() {}
	}
	secs := strconv.Itoa(int(d.Seconds()))
	var wg sync.WaitGroup
	fetch := func(file string, get func() ([]byte, error)) {
		defer wg.Done()
		raw, err := get()
		if err != nil {
			t.Logf("profile %s: %v", file, err)
			return
		}
		_ = os.WriteFile(filepath.Join(dir, file), raw, 0o644)
	}
	wg.Add(3)
	go fetch("apiserver-"+name+".metrics", func() ([]byte, error) {
		time.Sleep(d - time.Second)
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		return cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	})
	go fetch("apiserver-"+name+".pprof", func() ([]byte, error) {
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		return cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", secs).
			Timeout(d + 30*time.Second).DoRaw(context.Background())
	})
	go fetch("scheduler-"+name+".pprof", func() ([]byte, error) {
		c := &http.Client{Timeout: d + 30*time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // loopback, self-signed
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/debug/pprof/profile?seconds=%s", s.debugPort, secs))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("status %s", resp.Status)
		}
		return io.ReadAll(resp.Body)
	})
	return wg.Wait
}

// maxUpscales keeps every upscale a real grant: 10 VMs of 250m/1Gi growing
// by at most 12 units each fit a 32-vCPU/128Gi node.
const maxUpscales = 12

func benchNode(name string) error {
	ctx := context.Background()
	alloc := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"),
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

// report logs a figure and appends it to the cache's bench/plugin.txt.
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Println("plugin-bench:", line)
	cache := os.Getenv("VMSCALE_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "vmscale")
	}
	path := filepath.Join(cache, "bench", "plugin.txt")
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	if f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
		f.Close()
	}
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

// classify sorts a failed permit request: "wrong" answers (a 4xx, or a
// permit other than the one asked for when the node has room) are bugs;
// "error"s (a 5xx or no answer) are the apiserver failing to take the write
// within k8sCRUDTimeoutSeconds on an overloaded machine.
func classify(reply permitReply, err error, want api.Resources) string {
	switch {
	case err != nil:
		return "error: no answer"
	case reply.status >= 500:
		switch b := reply.body; {
		case strings.Contains(b, "write slots"):
			return "error: no free VM write slot within 1s (plugin backlog)"
		case strings.Contains(b, "deadline exceeded") || strings.Contains(b, "Timeout") || strings.Contains(b, "timed out"):
			return "error: VM patch timed out"
		case strings.Contains(b, "rejected our request"):
			return "error: VM changed under the patch (test guard)"
		default:
			return "error: " + strconv.Itoa(reply.status)
		}
	case reply.status != 200:
		return fmt.Sprintf("wrong: %d %.100s", reply.status, reply.body)
	case reply.permit != want:
		return fmt.Sprintf("wrong: asked %v, got %v", want, reply.permit)
	}
	return ""
}

// checkFailures fails the test on wrong answers always, and on errors when
// no request needed a write (the plugin alone answers those).
func checkFailures(t *testing.T, phase string, upscaleShare float64, reasons map[string]int) {
	t.Helper()
	for r, c := range reasons {
		if strings.HasPrefix(r, "wrong") || upscaleShare == 0 {
			t.Errorf("%s: %d × %s", phase, c, r)
		}
	}
}
