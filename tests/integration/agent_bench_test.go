package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent"
	"github.com/vmscale/vmscale/pkg/agent/scrape"
)

// startAgentPeer builds and starts tests/integration/agentpeer, the
// synthetic endpoints, in a process of its own, and returns its ports.
func startAgentPeer(t *testing.T) (metrics, monitor, permit int) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agentpeer")
	build := exec.Command("go", "build", "-o", bin, "./tests/integration/agentpeer")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agentpeer: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	if _, err := fmt.Fscan(bufio.NewReader(stdout), &metrics, &monitor, &permit); err != nil {
		t.Fatalf("agentpeer ports: %v", err)
	}
	return metrics, monitor, permit
}

// scrapeFloor scrapes the n VMs' addresses every 5 s for window, as the
// agent does but with nothing else, and returns the CPU time per scrape.
func scrapeFloor(t *testing.T, n, port int, window time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var count atomic.Int64
	for i := range n {
		tg := &scrape.Target{Addr: fmt.Sprintf("127.0.%d.%d:%d", 1+i/250, 1+i%250, port), Path: "/metrics", Timeout: 2 * time.Second}
		wg.Go(func() {
			defer tg.Close()
			var buf bytes.Buffer
			tk := time.NewTimer(time.Duration(i) * 5 * time.Second / time.Duration(n))
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
				tk.Reset(5 * time.Second)
				if page, err := tg.Get(ctx, &buf); err == nil {
					if _, err := scrape.ParseSystem(page); err == nil {
						count.Add(1)
					}
				}
			}
		})
	}
	time.Sleep(6 * time.Second) // every connection made, not synchronisation
	u0, s0 := cpuTime()
	c0 := count.Load()
	time.Sleep(window) // the measurement window, not synchronisation
	u1, s1 := cpuTime()
	scrapes := count.Load() - c0
	if scrapes < int64(n) {
		t.Fatalf("only %d scrapes in %s", scrapes, window)
	}
	return (u1 + s1 - u0 - s0) / time.Duration(scrapes)
}

// cpuTime is this process's user and system CPU time.
func cpuTime() (user, sys time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// TestAgentLoad500VMs: one agent managing 500 VMs, objects on the real
// apiserver, each VM on its own loopback address (127.0.x.y) with
// synthetic endpoints in another process (agentpeer): the guest exporter's
// page, a monitor answering health checks, a plugin granting every
// request. It measures, in steady state over 12 scrape cycles of 5 s, this
// process's CPU time and allocation per VM per cycle, and the heap held per
// VM. This process also runs the suite's webhook server and VM reconciler
// (idle here), and on loopback the kernel's receive work for each write is
// charged to the writer, so the CPU figure is an upper bound. For scale, the
// same run first measures the bare scrapes alone (fetch and parse, nothing
// else).
//
// It takes about three minutes; set VMSCALE_AGENT_BENCH=1 to run it.
func TestAgentLoad500VMs(t *testing.T) {
	if os.Getenv("VMSCALE_AGENT_BENCH") == "" {
		t.Skip("agent load benchmark (500 VMs on the real apiserver): set VMSCALE_AGENT_BENCH=1 (about three minutes)")
	}
	n := 500
	if v, err := strconv.Atoi(os.Getenv("VMSCALE_AGENT_BENCH_VMS")); err == nil && v > 0 {
		n = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := newNamespace(t, fresh("agent-bench"))
	node := fresh("agent-bench-node")
	t.Cleanup(func() { deleteAllIn(t, ns) })

	metricsPort, monitorPort, permitPort := startAgentPeer(t)
	schedulerPod(t)

	start := time.Now()
	if err := parallel(16, n, func(i int) error {
		vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("vm-%04d", i),
			Labels: map[string]string{"autoscaling.neon.tech/enabled": "true"}}}
		vm.Spec.SchedulerName = schedulerName
		vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 2000, Use: 250}
		vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
		vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 8, Use: 1}
		vm.Spec.Guest.RootDisk.Image = "vm-postgres:15"
		if err := k8sClient.Create(ctx, vm); err != nil {
			return err
		}
		vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmRunning, PodName: vm.Name + "-pod", Node: node,
			PodIP: fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)}
		return k8sClient.Status().Update(ctx, vm)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d VMs created in %s", n, time.Since(start).Round(time.Millisecond))

	c := agentConfig(t, metricsPort, monitorPort, permitPort)
	// What this process burns without the agent (the suite's webhook
	// server and VM reconciler, idle), to subtract.
	bu0, bs0 := cpuTime()
	b0 := time.Now()
	time.Sleep(10 * time.Second) // the baseline window, not synchronisation
	bu1, bs1 := cpuTime()
	baseline := float64(bu1+bs1-bu0-bs0) / time.Since(b0).Seconds() // CPU-seconds per second
	// The floor: what the same scrapes cost with nothing else, each VM's
	// page fetched every 5 s over its own kept-alive connection and parsed.
	floor := scrapeFloor(t, n, metricsPort, 30*time.Second)
	t.Logf("bare scrapes spread evenly over the period (fetch + parse, no agent): %s each", floor)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	metrics := agent.NewMetrics(prometheus.NewRegistry())
	a, err := agent.New(agent.Options{Config: func() *agent.Config { c.Metrics.System.SecondsBetweenRequests = 5; return c }(),
		Node: node, Rest: cfg, Log: testLogger(t), Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	eventually(t, 60*time.Second, "every VM scraped and its monitor connected", func() error {
		ok := testutil.ToFloat64(metrics.Scrapes.WithLabelValues("system", "ok"))
		up := testutil.ToFloat64(metrics.MonitorsUp)
		if int(testutil.ToFloat64(metrics.Runners)) != n || ok < float64(n) || int(up) != n {
			return fmt.Errorf("runners %v, scrapes %v, monitors %v", testutil.ToFloat64(metrics.Runners), ok, up)
		}
		return nil
	})
	// Let the first plugin requests and health checks settle, then measure.
	time.Sleep(5 * time.Second) // warm-up period, not synchronisation
	const cycles = 12
	window := cycles * 5 * time.Second
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	scr0 := testutil.ToFloat64(metrics.Scrapes.WithLabelValues("system", "ok"))
	if path := os.Getenv("VMSCALE_AGENT_BENCH_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
	}
	u0, s0 := cpuTime()
	w0 := time.Now()
	time.Sleep(window) // the measurement window, not synchronisation
	u1, s1 := cpuTime()
	elapsed := time.Since(w0)
	c0, c1 := u0+s0, u1+s1
	pprof.StopCPUProfile()
	runtime.ReadMemStats(&m1)
	scrapes := testutil.ToFloat64(metrics.Scrapes.WithLabelValues("system", "ok")) - scr0
	runtime.GC()
	var held runtime.MemStats
	runtime.ReadMemStats(&held)

	perCycles := float64(n) * elapsed.Seconds() / 5
	cpuPerVM := time.Duration((float64(c1-c0) - baseline*elapsed.Seconds()) / perCycles)
	allocPerVM := float64(m1.TotalAlloc-m0.TotalAlloc) / perCycles
	heapPerVM := (float64(held.HeapInuse) - float64(before.HeapInuse)) / float64(n)
	t.Logf("%d VMs, %s window: %.0f scrapes (%.2f per VM per 5 s cycle)", n, elapsed.Round(time.Millisecond), scrapes, scrapes/perCycles)
	t.Logf("CPU per VM per cycle: %s without the idle baseline (process: user %s, system %s per VM per cycle; total %s over the window, baseline %.1f ms/s)", cpuPerVM,
		time.Duration(float64(u1-u0)/perCycles), time.Duration(float64(s1-s0)/perCycles), c1-c0, baseline/1e6)
	t.Logf("allocated per VM per cycle: %.1f KiB; heap held per VM: %.1f KiB; goroutines: %d", allocPerVM/1024, heapPerVM/1024, runtime.NumGoroutine())
	if scrapes < 0.8*perCycles {
		t.Errorf("only %.0f scrapes in the window, want about %.0f", scrapes, perCycles)
	}
	if cpuPerVM > 100*time.Microsecond {
		t.Errorf("CPU per VM per cycle %s, over the 100 µs goal", cpuPerVM)
	}
	if heapPerVM > 100*1024 {
		t.Errorf("heap per VM %.1f KiB, over the 100 KiB goal", heapPerVM/1024)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
