package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/tests/testbin"
)

const schedulerName = "autoscale-scheduler"

// buildScheduler builds cmd/autoscale-scheduler once per test run.
func buildScheduler(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, repoRoot, "./cmd/autoscale-scheduler")
}

// scheduler is a running autoscale-scheduler process.
type scheduler struct {
	t                     *testing.T
	cmd                   *exec.Cmd
	exited                chan error
	logPath               string
	permitURL, metricsURL string
	configPath            string
	// debugPort, if set, serves kube-scheduler's /debug/pprof.
	debugPort int
}

// schedulerConfig is the shipped profile (config/scheduler) with a test
// kubeconfig and the plugin's config inline, on the given ports.
func schedulerConfig(t *testing.T, permitPort, metricsPort int) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "config", "scheduler", "scheduler-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	pluginRaw, err := os.ReadFile(filepath.Join(repoRoot, "config", "scheduler", "autoscale-enforcer-config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var args map[string]any
	if err := json.Unmarshal(pluginRaw, &args); err != nil {
		t.Fatal(err)
	}
	args["permitAddr"] = fmt.Sprintf("127.0.0.1:%d", permitPort)
	args["metricsAddr"] = fmt.Sprintf("127.0.0.1:%d", metricsPort)
	args["scoring"].(map[string]any)["randomize"] = false
	cfg["clientConnection"] = map[string]any{"kubeconfig": schedulerKubeconfig(t), "qps": 500, "burst": 1000}
	profile := cfg["profiles"].([]any)[0].(map[string]any)
	profile["pluginConfig"] = []any{map[string]any{"name": "AutoscaleEnforcer", "args": args}}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "scheduler-config.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serviceAccountToken applies a component's shipped RBAC (config/<dir>/rbac.yaml)
// and returns a token of its ServiceAccount in kube-system, so the component
// runs with exactly the permissions it is deployed with.
func serviceAccountToken(t *testing.T, dir, account string) string {
	t.Helper()
	ctx := context.Background()
	for _, obj := range readManifests(t, filepath.Join(repoRoot, "config", dir, "rbac.yaml")) {
		if err := k8sClient.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, account,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for the %s ServiceAccount: %v", account, err)
	}
	return tok.Status.Token
}

// schedulerKubeconfig is a kubeconfig with the scheduler's ServiceAccount
// token and shipped RBAC.
func schedulerKubeconfig(t *testing.T) string {
	t.Helper()
	token := serviceAccountToken(t, "scheduler", "autoscale-scheduler")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["autoscale-scheduler"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "autoscale-scheduler"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "scheduler.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func startScheduler(t *testing.T) *scheduler {
	t.Helper()
	permitPort, metricsPort := testbin.FreePort(t), testbin.FreePort(t)
	s := &scheduler{t: t, configPath: schedulerConfig(t, permitPort, metricsPort),
		permitURL:  fmt.Sprintf("http://127.0.0.1:%d/", permitPort),
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d", metricsPort)}
	if os.Getenv("VMSCALE_PLUGIN_BENCH_PPROF") != "" {
		s.debugPort = testbin.FreePort(t)
	}
	s.logPath = filepath.Join(t.TempDir(), "scheduler.log")
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *scheduler) start() {
	s.t.Helper()
	s.launch()
	s.waitReady()
}

// launch starts the process without waiting for it.
func (s *scheduler) launch() {
	s.t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	args := []string{"--config=" + s.configPath, "--secure-port=0", "-v=2"}
	if s.debugPort != 0 {
		// kube-scheduler's own profiling endpoint, open to anonymous
		// requests on loopback (for the permit benchmark's profiles).
		args = append(args[:1], fmt.Sprintf("--secure-port=%d", s.debugPort), "--bind-address=127.0.0.1",
			"--authorization-always-allow-paths=/healthz,/readyz,/livez,/debug/pprof/*", "-v=2")
	}
	s.cmd = exec.Command(buildScheduler(s.t), args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan error, 1)
	cmd := s.cmd
	go func() { s.exited <- cmd.Wait(); logf.Close() }()
}

func (s *scheduler) waitReady() {
	s.t.Helper()
	poll := func() error {
		select {
		case err := <-s.exited:
			s.exited <- err
			return fmt.Errorf("scheduler exited: %v\n%s", err, s.logTail())
		default:
		}
		return httpOK(s.metricsURL + "/readyz")
	}
	eventually(s.t, 60*time.Second, "autoscale-scheduler ready", poll)
}

// kill stops the scheduler the hard way, as a crash would.
func (s *scheduler) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

func (s *scheduler) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
	if s.t.Failed() {
		s.t.Logf("autoscale-scheduler log (tail):\n%s", s.logTail())
	}
}

func (s *scheduler) logTail() string {
	raw, _ := os.ReadFile(s.logPath)
	if len(raw) > 8000 {
		raw = raw[len(raw)-8000:]
	}
	return string(raw)
}

// metric reads one sample of the plugin's metrics, e.g.
// `vmscale_plugin_node_reserved{node="n",resource="cpu"}`.
func (s *scheduler) metric(series string) (float64, error) {
	resp, err := http.Get(s.metricsURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, series+" ") {
			var v float64
			_, err := fmt.Sscanf(strings.TrimPrefix(line, series+" "), "%g", &v)
			return v, err
		}
	}
	return 0, fmt.Errorf("no series %s", series)
}

// permitReply is one answer of the permit API.
type permitReply struct {
	status int
	body   string
	permit api.Resources
}

var permitClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxIdleConns: 256}}

func postPermit(url string, body []byte) (permitReply, error) {
	resp, err := permitClient.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return permitReply{}, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := permitReply{status: resp.StatusCode, body: string(raw)}
	if resp.StatusCode == http.StatusOK {
		var pr api.PluginResponse
		if err := json.Unmarshal(raw, &pr); err != nil {
			return out, fmt.Errorf("decode %s: %w", raw, err)
		}
		out.permit = pr.Permit
	}
	return out, nil
}

func agentRequest(ns, pod string, want api.Resources, last *api.Resources) []byte {
	unit := api.Resources{VCPU: 250, Mem: 1 << 30}
	b, _ := json.Marshal(api.AgentRequest{ProtoVersion: api.CurrentPluginProto, Pod: api.PodRef{Namespace: ns, Name: pod},
		ComputeUnit: &unit, Resources: want, LastPermit: last, Metrics: &api.Metrics{LoadAverage1Min: 0.5}})
	return b
}

// createNode registers a Node with the given allocatable amounts and label
// vmscale-test=<group>, without the not-ready taint the apiserver puts on
// nodes created without a kubelet.
func createNode(t *testing.T, name, group, cpu, mem string) {
	t.Helper()
	ctx := context.Background()
	alloc := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem),
		corev1.ResourcePods: resource.MustParse("110")}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"vmscale-test": group, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
		Status: corev1.NodeStatus{Capacity: alloc, Allocatable: alloc,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}},
	}
	if err := k8sClient.Create(ctx, n); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = k8sClient.Delete(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	// Status is kept on create for nodes, but make sure, and drop the taint.
	eventually(t, 10*time.Second, "node "+name+" untainted with capacity", func() error {
		var got corev1.Node
		if err := k8sClient.Get(ctx, client.ObjectKey{Name: name}, &got); err != nil {
			return err
		}
		if got.Status.Allocatable.Cpu().Cmp(resource.MustParse(cpu)) != 0 {
			got.Status = n.Status
			return k8sClient.Status().Update(ctx, &got)
		}
		if len(got.Spec.Taints) > 0 {
			got.Spec.Taints = nil
			return k8sClient.Update(ctx, &got)
		}
		return nil
	})
}

// createVM creates a VirtualMachine for the autoscale-scheduler, pinned to
// the node group, and its runner pod as the controller would (labels,
// vm.neon.tech/resources), and points the VM's status at the pod.
func createVM(t *testing.T, ns, name, group string, cpu vmv1.MilliCPU, slots int32, labels map[string]string) *corev1.Pod {
	t.Helper()
	return createVMWithPod(t, ns, name, name+"-runner", group, cpu, slots, labels)
}

// createVMWithPod is createVM with the runner pod's name chosen.
func createVMWithPod(t *testing.T, ns, name, podName, group string, cpu vmv1.MilliCPU, slots int32, labels map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"autoscaling.neon.tech/enabled": "true"}}}
	for k, v := range labels {
		vm.Labels[k] = v
	}
	vm.Spec.SchedulerName = schedulerName
	vm.Spec.NodeSelector = map[string]string{"vmscale-test": group}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 4000, Use: cpu}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 16, Use: slots}
	vm.Spec.Guest.RootDisk.Image = "vm-postgres:15"
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatalf("create VM %s: %v", name, err)
	}
	pod, err := podspec.RunnerPod(vm, podName, podspec.Settings{RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, pod); err != nil {
		t.Fatalf("create runner pod %s: %v", pod.Name, err)
	}
	vm.Status.PodName = pod.Name
	vm.Status.Phase = vmv1.VmRunning
	if err := k8sClient.Status().Update(ctx, vm); err != nil {
		t.Fatalf("VM %s status: %v", name, err)
	}
	return pod
}

func podNode(ns, name string) (string, error) {
	var p corev1.Pod
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
		return "", err
	}
	return p.Spec.NodeName, nil
}

func deleteAllIn(t *testing.T, ns string) {
	ctx := context.Background()
	_ = k8sClient.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns), client.GracePeriodSeconds(0))
	_ = k8sClient.DeleteAllOf(ctx, &vmv1.VirtualMachineMigration{}, client.InNamespace(ns))
	_ = k8sClient.DeleteAllOf(ctx, &vmv1.VirtualMachine{}, client.InNamespace(ns))
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

var freshCount atomic.Int32

// fresh makes a namespace name unique within the test process: envtest runs
// no namespace controller, so a deleted namespace stays Terminating and a
// repeated run (-count) could not reuse its name.
func fresh(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, freshCount.Add(1))
}

// waitPluginKnows waits until the plugin has seen a runner pod's binding
// (its watch trails the apiserver by a little): a steady request for the
// VM's current size stops getting 404.
func waitPluginKnows(t *testing.T, s *scheduler, ns, pod string, use api.Resources) {
	t.Helper()
	eventually(t, 10*time.Second, "plugin sees "+ns+"/"+pod+" bound", func() error {
		reply, err := postPermit(s.permitURL, agentRequest(ns, pod, use, &use))
		switch {
		case err != nil:
			return err
		case reply.status == http.StatusNotFound:
			return fmt.Errorf("%s", reply.body)
		case reply.status != http.StatusOK || reply.permit != use:
			t.Fatalf("steady request for %s: %d %s", pod, reply.status, reply.body)
		}
		return nil
	})
}
