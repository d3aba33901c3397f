package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// runnerGrace is the test VM's terminationGracePeriodSeconds: a TCG guest
// on a loaded 2-core machine needs several seconds to stop Postgres and
// power off.
const runnerGrace = 90

// runnerVM is a small Postgres VM of the test guest (make images builds
// vmscale/vm-postgres from it) with SysfsScaling.
func runnerVM(t testing.TB, ns, name string) *vmv1.VirtualMachine {
	vm := &vmv1.VirtualMachine{}
	vm.Name, vm.Namespace, vm.UID = name, ns, "00000000-0000-0000-0000-000000000001"
	vm.Spec = vmv1.VirtualMachineSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](runnerGrace),
		CPUScalingMode:                ptr.To(vmv1.CPUScalingModeSysfs),
		Guest: vmv1.Guest{
			CPUs:           vmv1.CPUs{Min: 1000, Max: 2000, Use: 1000},
			MemorySlotSize: resource.MustParse("256Mi"),
			MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 4, Use: 2},
			RootDisk:       vmv1.RootDisk{Image: Image(t, "vm-postgres"), ImagePullPolicy: "Never", Size: resource.MustParse("3Gi")},
			Ports:          []vmv1.Port{{Name: "postgres", Port: 5432}},
		},
		Disks: []vmv1.Disk{{
			Name: "app-secret", MountPath: "/etc/app-secret", Watch: ptr.To(true),
			DiskSource: vmv1.DiskSource{Secret: &corev1.SecretVolumeSource{SecretName: name + "-secret"}},
		}},
	}
	return vm
}

// applyRunnerPod creates vm's runner pod as the controller would (without
// the owner reference: no VirtualMachine object exists here, and the
// garbage collector would delete the pod).
func applyRunnerPod(t testing.TB, vm *vmv1.VirtualMachine, podName string) {
	t.Helper()
	applyRunnerPodOn(t, vm, podName, "")
}

// applyRunnerPodOn is applyRunnerPod on node (empty: the scheduler's
// choice).
func applyRunnerPodOn(t testing.TB, vm *vmv1.VirtualMachine, podName, node string) {
	t.Helper()
	pod, err := podspec.RunnerPod(vm, podName, podspec.Settings{
		RunnerImage: Image(t, "neonvm-runner"), Privileged: true, QEMUUser: "qemu",
		DiskSyncInterval: 2 * time.Second,
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	pod.OwnerReferences = nil
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Spec.Containers[0].ImagePullPolicy = "Never"
	pod.Spec.NodeName = node
	data, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, vm.Namespace, string(data))
}

func podField(t testing.TB, ns, pod, jsonpath string) string {
	t.Helper()
	return strings.TrimSpace(Kubectl(t, kubeconfig, "-n", ns, "get", "pod", pod, "-o", "jsonpath="+jsonpath))
}

// waitPodReady waits for pod to be Ready and returns how long that took
// from since.
func waitPodReady(t testing.TB, ns, pod string, timeout time.Duration, since time.Time) time.Duration {
	t.Helper()
	poll(t, timeout, "pod "+pod+" ready", func() error {
		out, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", pod, "-o",
			`jsonpath={.status.phase} {.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.HasPrefix(out, "Failed") || strings.HasPrefix(out, "Succeeded") {
			logs, _ := TryKubectl(kubeconfig, "-n", ns, "logs", pod, "--all-containers", "--tail=40")
			t.Fatalf("pod %s ended (%s):\n%s", pod, out, logs)
		}
		if strings.TrimSpace(out) != "Running True" {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
	return time.Since(since)
}

// A runner pod boots the guest: Postgres and the metrics answer on the pod
// IP from a pod on the other node (the guest sees that pod's own address),
// SysfsScaling works through the runner's /cpu_change, a watched Secret's
// update reaches the guest, and deleting the pod powers the guest off
// cleanly within its grace period.
func TestRunnerPod(t *testing.T) {
	kc(t)
	ns := namespace(t, "runnerpod")
	vm := runnerVM(t, ns, "pg")
	const pod = "pg-runner"
	Kubectl(t, kubeconfig, "-n", ns, "create", "secret", "generic", "pg-secret", "--from-literal=password=first")
	created := time.Now()
	applyRunnerPod(t, vm, pod)
	ready := waitPodReady(t, ns, pod, 6*time.Minute, created)
	t.Logf("runner pod created -> Ready (guest booted, neonvm-daemon answering): %s", ready.Round(100*time.Millisecond))

	node, podIP := podField(t, ns, pod, "{.spec.nodeName}"), podField(t, ns, pod, "{.status.podIP}")
	other := Nodes[0]
	if node == other {
		other = Nodes[1]
	}
	apply(t, ns, netcheckPod("client", other, Image(t, "netcheck"), `"serve", ":8080"`, ""))
	waitReady(t, ns, "client")
	clientIP := podField(t, ns, "client", "{.status.podIP}")

	poll(t, 2*time.Minute, "Postgres on "+podIP+":5432 from "+other, func() error {
		out, err := podExec(t, ns, "client", "pg", podIP+":5432", "select version()")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "PostgreSQL 15") {
			return fmt.Errorf("version() = %q", out)
		}
		return nil
	})
	t.Logf("runner pod created -> Postgres answering on the pod IP: %s", time.Since(created).Round(100*time.Millisecond))
	if out, err := podExec(t, ns, "client", "pg", podIP+":5432", "select host(inet_client_addr())"); err != nil || strings.TrimSpace(out) != clientIP {
		t.Errorf("the guest sees the client as %q (%v), want the client pod's IP %s", out, err, clientIP)
	}
	metrics, err := podExec(t, ns, "client", "get", "http://"+podIP+":9100/metrics")
	if err != nil || !strings.Contains(metrics, "host_load1 ") || !strings.Contains(metrics, "host_memory_total_bytes") {
		t.Errorf("metrics on %s:9100: %v\n%s", podIP, err, metrics)
	}

	// QEMU dropped to the runner image's qemu user (36) after start-up.
	uid, err := TryKubectl(kubeconfig, "-n", ns, "exec", pod, "-c", podspec.RunnerContainer, "--", "sh", "-c",
		`for p in /proc/[0-9]*; do grep -qa qemu-system $p/cmdline 2>/dev/null && grep ^Uid: $p/status; done`)
	if f := strings.Fields(uid); err != nil || len(f) < 2 || f[1] != "36" {
		t.Errorf("QEMU's user: %q (%v), want uid 36", uid, err)
	}

	// The watched Secret: its first version is on the guest's disk; an
	// update reaches the running guest (kubelet refresh + runner sync).
	readSecret := func() (string, error) {
		return podExec(t, ns, "client", "pg", podIP+":5432", "select pg_read_file('/etc/app-secret/password')")
	}
	if out, err := readSecret(); err != nil || strings.TrimSpace(out) != "first" {
		t.Errorf("the guest's /etc/app-secret/password = %q (%v), want first", out, err)
	}
	updated := time.Now()
	Kubectl(t, kubeconfig, "-n", ns, "patch", "secret", "pg-secret", "-p", `{"stringData":{"password":"second"}}`)
	poll(t, 3*time.Minute, "the Secret's update inside the guest", func() error {
		out, err := readSecret()
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "second" {
			return fmt.Errorf("password = %q", out)
		}
		return nil
	})
	t.Logf("Secret updated -> new value read inside the guest: %s", time.Since(updated).Round(100*time.Millisecond))

	// SysfsScaling through the runner API (port 25183 on the pod IP).
	runnerURL := "http://" + podIP + ":25183"
	if got := cpuCurrent(t, runnerURL); got != "1" {
		t.Errorf("cpu_current before scaling = %s, want 1", got)
	}
	if code, body := post(t, runnerURL+"/cpu_change", `{"VCPUs":2}`); code != http.StatusOK {
		t.Fatalf("cpu_change to 2: %d %s", code, body)
	}
	poll(t, time.Minute, "guest online CPUs = 2", func() error {
		if got := cpuCurrent(t, runnerURL); got != "2" {
			return fmt.Errorf("cpu_current = %s", got)
		}
		return nil
	})
	if code, body := post(t, runnerURL+"/cpu_change", `{"VCPUs":"1500m"}`); code != http.StatusOK {
		t.Fatalf("cpu_change to 1500m: %d %s", code, body)
	}
	// The guest keeps 2 CPUs online (rounded up); the runner reports the
	// amount set while it does (a fractional status must be able to match
	// a fractional spec).
	if got := cpuCurrent(t, runnerURL); got != "1500m" {
		t.Errorf("after 1500m, cpu_current = %s; want 1500m", got)
	}
	if code, _ := post(t, runnerURL+"/cpu_change", `{"VCPUs":3}`); code != http.StatusBadRequest {
		t.Errorf("cpu_change above cpus.max answered %d, want 400", code)
	}

	// Deleting the pod powers the guest off: the runner logs QEMU's clean
	// exit, well within the grace period.
	logs := followLogs(t, ns, pod)
	start := time.Now()
	Kubectl(t, kubeconfig, "-n", ns, "delete", "pod", pod, "--wait=true", fmt.Sprintf("--timeout=%ds", runnerGrace+30))
	took := time.Since(start)
	out := logs()
	t.Logf("pod deleted -> gone (guest powered off): %s (grace period %ds)", took.Round(100*time.Millisecond), runnerGrace)
	if !strings.Contains(out, "QEMU exited after power-off") {
		t.Errorf("the runner did not report a clean power-off; its last log lines:\n%s", tail(out, 15))
	}
	if took >= runnerGrace*time.Second {
		t.Errorf("deletion took %s, not within the %ds grace period", took, runnerGrace)
	}
}

func cpuCurrent(t *testing.T, runnerURL string) string {
	t.Helper()
	resp, err := http.Get(runnerURL + "/cpu_current")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		VCPUs json.RawMessage `json:"VCPUs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("cpu_current: %v", err)
	}
	return strings.Trim(string(body.VCPUs), `"`)
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

// followLogs streams the runner container's logs until it exits; the
// returned function waits for the stream's end (at most 3 minutes) and
// returns what it saw.
func followLogs(t *testing.T, ns, pod string) func() string {
	t.Helper()
	bin, err := binDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), "--kubeconfig", kubeconfig, "-n", ns, "logs", "-f", pod, "-c", podspec.RunnerContainer)
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	// Wait until the stream is attached, so nothing said at shutdown is lost.
	poll(t, 30*time.Second, "log stream attached", func() error {
		if !strings.Contains(buf.String(), "QEMU started") {
			return fmt.Errorf("no output yet")
		}
		return nil
	})
	return func() string {
		_ = cmd.Wait()
		cancel()
		return buf.String()
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
