package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/pkg/agent"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/guestmetrics"
	"github.com/vmscale/vmscale/pkg/monitor"
)

// guestProc is a /proc the test writes: the guest exporter reads its load
// and memory from it at every scrape.
type guestProc struct{ dir string }

func (g guestProc) set(t *testing.T, load float64, usedBytes uint64) {
	t.Helper()
	const total = 4 << 30
	la := fmt.Sprintf("%.2f %.2f 0.00 1/100 1\n", load, load)
	mi := fmt.Sprintf("MemTotal: %d kB\nMemAvailable: %d kB\nCached: %d kB\n", total/1024, (total-usedBytes)/1024, 0)
	for name, data := range map[string]string{"loadavg": la, "meminfo": mi} {
		tmp := filepath.Join(g.dir, name+".tmp")
		if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(g.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// recordingMonitor is the vm-monitor's real Core (no cgroup, no cache:
// it approves every downscale) with a switch to deny, that records what
// the VM object said at each request, to check the order of operations.
type recordingMonitor struct {
	core   *monitor.Core
	ns, vm string

	mu   sync.Mutex
	deny bool
	log  []string // "up <granted> vm=<spec>" / "down <target> vm=<spec>"
	errs []string
}

func (m *recordingMonitor) Setup(ctx context.Context) error { return m.core.Setup(ctx) }

func (m *recordingMonitor) spec() api.Resources {
	var vm vmv1.VirtualMachine
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: m.ns, Name: m.vm}, &vm); err != nil {
		return api.Resources{}
	}
	return api.Resources{VCPU: vm.Spec.Guest.CPUs.Use, Mem: api.Bytes(vm.Spec.Guest.MemorySlots.Use) << 30}
}

func fromAlloc(a api.Allocation) api.Resources {
	return api.Resources{VCPU: vmv1.MilliCPU(a.Cpu*1000 + 0.5), Mem: api.Bytes(a.Mem)}
}

func (m *recordingMonitor) Upscale(ctx context.Context, granted api.Allocation) error {
	spec, g := m.spec(), fromAlloc(granted)
	m.mu.Lock()
	m.log = append(m.log, fmt.Sprintf("up %s vm=%s", g, spec))
	if !g.FitsIn(spec) {
		m.errs = append(m.errs, fmt.Sprintf("monitor told of %s before the VM had it (%s)", g, spec))
	}
	m.mu.Unlock()
	return m.core.Upscale(ctx, granted)
}

func (m *recordingMonitor) Downscale(ctx context.Context, target api.Allocation) (api.DownscaleResult, error) {
	spec, tg := m.spec(), fromAlloc(target)
	m.mu.Lock()
	m.log = append(m.log, fmt.Sprintf("down %s vm=%s", tg, spec))
	if !spec.AnyAbove(tg) {
		m.errs = append(m.errs, fmt.Sprintf("monitor asked for %s after the VM was already there (%s)", tg, spec))
	}
	deny := m.deny
	m.mu.Unlock()
	if deny {
		return api.DownscaleResult{Ok: false, Status: "test says no"}, nil
	}
	return m.core.Downscale(ctx, target)
}

func (m *recordingMonitor) count(prefix string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, l := range m.log {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// agentRestConfig is a rest config with the agent's ServiceAccount token
// and shipped RBAC (config/agent/rbac.yaml).
func agentRestConfig(t *testing.T) *rest.Config {
	t.Helper()
	token := serviceAccountToken(t, "agent", "autoscaler-agent")
	return &rest.Config{Host: cfg.Host, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}, BearerToken: token}
}

// agentConfig is the shipped config.json with this test's ports and a
// 1-second scrape.
func agentConfig(t *testing.T, metricsPort, monitorPort, permitPort int) *agent.Config {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "config", "agent", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := agent.ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	c.Metrics.System.Port, c.Metrics.System.SecondsBetweenRequests = uint16(metricsPort), 1
	c.Monitor.ServerPort = uint16(monitorPort)
	c.Scheduler.RequestPort = uint16(permitPort)
	c.DumpState = nil
	return c
}

// schedulerPod is the object the agent finds the scheduler by: a Ready pod
// in kube-system labelled name=autoscale-scheduler. The scheduler itself
// runs as a host process on 127.0.0.1, so that is the pod's IP.
func schedulerPod(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: fresh("autoscale-scheduler-agent-test"),
		Labels: map[string]string{"name": schedulerName}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "s", Image: "vmscale/autoscale-scheduler:dev"}}}}
	if err := k8sClient.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), p, client.GracePeriodSeconds(0)) })
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := k8sClient.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
}

// TestAgentScalesVMUpAndDown runs the autoscaler-agent (with its shipped
// config and RBAC) against the real apiserver and the real
// autoscale-scheduler binary, with the vm-monitor's real server and the
// guest exporter's real collector on loopback. Only the VM's status is set
// by hand, standing in for the neonvm-controller, which cannot run a guest
// here (so the VM is in a namespace it does not reconcile). Under load the
// VM grows to its max (1 vCPU / 4 GiB) by plugin permit, VM patch and
// monitor notification, in that order; when the load drops and the monitor
// denies, it stays; once the monitor approves, it shrinks back to its min,
// monitor first. All along the VM never leaves its bounds nor passes the
// plugin's approval.
func TestAgentScalesVMUpAndDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := newNamespace(t, fresh("agent"))
	node := fresh("agent-node")
	createNode(t, node, node, "4", "16Gi")
	sched := startScheduler(t)
	_, permitPortS, _ := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(sched.permitURL, "http://"), "/"))
	permitPort, _ := strconv.Atoi(permitPortS)
	schedulerPod(t)

	// The guest's exporter and monitor, on loopback.
	proc := guestProc{dir: t.TempDir()}
	proc.set(t, 0, 64<<20)
	reg := prometheus.NewRegistry()
	reg.MustRegister(guestmetrics.Collector{Proc: proc.dir})
	metricsL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsSrv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = metricsSrv.Serve(metricsL) }()
	defer metricsSrv.Close()
	serveAlso(t, metricsSrv, metricsL)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mon := &recordingMonitor{ns: ns, vm: "vm", core: &monitor.Core{MemTotal: func() (uint64, error) { return 1 << 30, nil },
		Clock: clock.RealClock{}, Log: quiet, Metrics: monitor.NewMetrics(nil)}}
	ms := monitor.NewServer(mon, nil, quiet, monitor.NewMetrics(nil), clock.RealClock{})
	monL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	monSrv := &http.Server{Handler: ms.Routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = monSrv.Serve(monL) }()
	defer monSrv.Close()
	serveAlso(t, monSrv, monL)
	defer ms.Close()

	// The VM, 250m–1 vCPU and 1–4 GiB, with its runner pod bound by the
	// scheduler to the node.
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "vm", Labels: map[string]string{"autoscaling.neon.tech/enabled": "true"}}}
	vm.Spec.SchedulerName = schedulerName
	vm.Spec.NodeSelector = map[string]string{"vmscale-test": node}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 1000, Use: 250}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 4, Use: 1}
	vm.Spec.Guest.RootDisk.Image = "vm-postgres:15"
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	pod, err := podspec.RunnerPod(vm, "vm-runner", podspec.Settings{RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	defer deleteAllIn(t, ns)
	eventually(t, 30*time.Second, "runner pod bound", func() error {
		n, err := podNode(ns, pod.Name)
		if err != nil || n != node {
			return fmt.Errorf("on %q (%v)", n, err)
		}
		return nil
	})
	vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmRunning, PodName: pod.Name, PodIP: "127.0.0.1", Node: node}
	if err := k8sClient.Status().Update(ctx, vm); err != nil {
		t.Fatal(err)
	}

	// Watch the VM all along: within bounds, never past the approval.
	var watchMu sync.Mutex
	var violations []string
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for ctx.Err() == nil {
			var got vmv1.VirtualMachine
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &got); err == nil {
				g := got.Spec.Guest
				use := api.Resources{VCPU: g.CPUs.Use, Mem: api.Bytes(g.MemorySlots.Use) << 30}
				var bad string
				if g.CPUs.Use < 250 || g.CPUs.Use > 1000 || g.MemorySlots.Use < 1 || g.MemorySlots.Use > 4 {
					bad = fmt.Sprintf("use %s outside bounds", use)
				}
				if a, ok := got.Annotations[api.ApprovedAnnotation]; ok {
					var approved api.Resources
					if json.Unmarshal([]byte(a), &approved) == nil && use.AnyAbove(approved) && use.AnyAbove(api.Resources{VCPU: 250, Mem: 1 << 30}) {
						bad = fmt.Sprintf("use %s above the plugin's approval %s", use, approved)
					}
				}
				if bad != "" {
					watchMu.Lock()
					violations = append(violations, bad)
					watchMu.Unlock()
				}
				// Stand in for the controller: report the target revision
				// as applied, as it does once the guest has the resources.
				if tr := got.Spec.TargetRevision; tr != nil && (got.Status.CurrentRevision == nil || *got.Status.CurrentRevision != *tr) {
					got.Status.CurrentRevision = tr.DeepCopy()
					_ = k8sClient.Status().Update(ctx, &got)
				}
			}
			time.Sleep(20 * time.Millisecond) // sampling period, not synchronisation
		}
	}()

	metrics := agent.NewMetrics(prometheus.NewRegistry())
	a, err := agent.New(agent.Options{Config: agentConfig(t, metricsL.Addr().(*net.TCPAddr).Port, monL.Addr().(*net.TCPAddr).Port, permitPort),
		Node: node, Rest: agentRestConfig(t), Log: testLogger(t), Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()

	spec := func() (api.Resources, error) {
		var got vmv1.VirtualMachine
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &got); err != nil {
			return api.Resources{}, err
		}
		return api.Resources{VCPU: got.Spec.Guest.CPUs.Use, Mem: api.Bytes(got.Spec.Guest.MemorySlots.Use) << 30}, nil
	}
	waitFor := func(what string, want api.Resources) {
		t.Helper()
		eventually(t, 60*time.Second, what, func() error {
			got, err := spec()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("VM uses %s, want %s (monitor saw %v)", got, want, mon.log)
			}
			return nil
		})
	}

	// Load 2 on a 0.25-vCPU unit: the goal is past max; the VM goes to max.
	start := time.Now()
	proc.set(t, 2, 64<<20)
	maxRes := api.Resources{VCPU: 1000, Mem: 4 << 30}
	waitFor("upscale to max", maxRes)
	t.Logf("upscale to max: VM patched %s after the load rose", time.Since(start).Round(time.Millisecond))
	eventually(t, 30*time.Second, "monitor told of the full upscale", func() error {
		mon.mu.Lock()
		defer mon.mu.Unlock()
		for _, l := range mon.log {
			if strings.HasPrefix(l, "up "+maxRes.String()) {
				return nil
			}
		}
		return fmt.Errorf("monitor log %v", mon.log)
	})
	t.Logf("upscale to max: monitor notified %s after the load rose", time.Since(start).Round(time.Millisecond))
	approved := getVM(t, ns, "vm").Annotations[api.ApprovedAnnotation]
	if approved != `{"vCPUs":1,"mem":"4Gi"}` {
		t.Fatalf("plugin's approval on the VM: %q", approved)
	}

	// The state dump shows the runner with the plugin's permit and the
	// monitor's approval.
	rec := httptest.NewRecorder()
	a.DumpHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	var dump struct {
		Node    string
		Runners []struct {
			VM    string
			State struct {
				Permit, MonitorApproved *api.Resources
			}
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &dump); err != nil {
		t.Fatalf("state dump: %v\n%s", err, rec.Body.String())
	}
	if dump.Node != node || len(dump.Runners) != 1 || dump.Runners[0].VM != ns+"/vm" ||
		dump.Runners[0].State.Permit == nil || *dump.Runners[0].State.Permit != maxRes ||
		dump.Runners[0].State.MonitorApproved == nil || *dump.Runners[0].State.MonitorApproved != maxRes {
		t.Fatalf("state dump: %s", rec.Body.String())
	}

	// The scheduler crashes and comes back: nothing is lost (the agent
	// re-sends its last permit; the approval is on the VM).
	sched.kill()
	sched.start()

	// The load drops but the monitor denies: the VM stays.
	mon.mu.Lock()
	mon.deny = true
	mon.mu.Unlock()
	proc.set(t, 0, 64<<20)
	eventually(t, 30*time.Second, "a downscale asked and denied", func() error {
		if mon.count("down ") < 2 {
			return fmt.Errorf("%d downscale requests", mon.count("down "))
		}
		return nil
	})
	if got, err := spec(); err != nil || got != maxRes {
		t.Fatalf("VM shrank to %s although the monitor denied (%v)", got, err)
	}

	// The monitor approves: the VM shrinks to its min.
	mon.mu.Lock()
	mon.deny = false
	mon.mu.Unlock()
	start = time.Now()
	waitFor("downscale to min", api.Resources{VCPU: 250, Mem: 1 << 30})
	t.Logf("downscale to min: %s after the monitor started approving", time.Since(start).Round(time.Millisecond))
	eventually(t, 30*time.Second, "plugin told of the downscale", func() error {
		if a := getVM(t, ns, "vm").Annotations[api.ApprovedAnnotation]; a != `{"vCPUs":"250m","mem":"1Gi"}` {
			return fmt.Errorf("approval %s", a)
		}
		return nil
	})

	// The downscale is complete once the agent has seen the status reach
	// its revision; the runner stops below, so this must come first.
	eventually(t, 30*time.Second, "the agent saw the downscale in the VM's status", func() error {
		var m dto.Metric
		if err := metrics.ScalingPhase.WithLabelValues("down", "status").(prometheus.Histogram).Write(&m); err != nil {
			return err
		}
		if m.Histogram.GetSampleCount() == 0 {
			return errors.New("no down/status latency yet")
		}
		return nil
	})

	// Migrating: not this agent's to scale any more; the runner stops.
	// Back on this node behind another pod: a new runner starts.
	setStatus := func(phase vmv1.VmPhase, podIP string) {
		t.Helper()
		eventually(t, 10*time.Second, "VM status "+string(phase), func() error {
			var got vmv1.VirtualMachine
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(vm), &got); err != nil {
				return err
			}
			got.Status.Phase, got.Status.PodIP = phase, podIP
			return k8sClient.Status().Update(ctx, &got)
		})
	}
	runners := func(want float64) func() error {
		return func() error {
			if got := testutil.ToFloat64(metrics.Runners); got != want {
				return fmt.Errorf("%v runners, want %v", got, want)
			}
			return nil
		}
	}
	setStatus(vmv1.VmMigrating, "127.0.0.1")
	eventually(t, 10*time.Second, "runner stopped while migrating", runners(0))
	setStatus(vmv1.VmRunning, "127.0.0.2")
	eventually(t, 10*time.Second, "runner started again", runners(1))
	eventually(t, 30*time.Second, "new runner connected to the monitor at the new address", func() error {
		if got := testutil.ToFloat64(metrics.MonitorsUp); got != 1 {
			return fmt.Errorf("%v monitor connections", got)
		}
		return nil
	})

	cancel()
	if err := <-agentDone; err != nil {
		t.Fatalf("agent: %v", err)
	}
	<-watchDone
	mon.mu.Lock()
	defer mon.mu.Unlock()
	watchMu.Lock()
	defer watchMu.Unlock()
	if len(mon.errs) > 0 || len(violations) > 0 {
		t.Fatalf("order: %v\nbounds/approval: %v\nmonitor log: %v", mon.errs, violations, mon.log)
	}
	for _, p := range []struct{ dir, phase string }{{"up", "permit"}, {"up", "vm_patch"}, {"up", "status"}, {"up", "monitor"},
		{"down", "monitor"}, {"down", "vm_patch"}, {"down", "status"}, {"down", "plugin"}} {
		var m dto.Metric
		if err := metrics.ScalingPhase.WithLabelValues(p.dir, p.phase).(prometheus.Histogram).Write(&m); err != nil || m.Histogram.GetSampleCount() != 1 {
			t.Errorf("no latency recorded for %s/%s", p.dir, p.phase)
			continue
		}
		t.Logf("scaling %s, decision to %s: %s", p.dir, p.phase, time.Duration(m.Histogram.GetSampleSum()*float64(time.Second)).Round(time.Millisecond))
	}
	t.Logf("monitor saw: %v", mon.log)
}

// serveAlso serves srv on 127.0.0.2 too, on l's port: where the VM's
// "new pod" is after its move.
func serveAlso(t *testing.T, srv *http.Server, l net.Listener) {
	t.Helper()
	l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatalf("listen on 127.0.0.2: %v", err)
	}
	go func() { _ = srv.Serve(l2) }()
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("VMSCALE_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
