package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmscale/vmscale/tests/testbin"
)

// controllerProc is neonvm-controller running on the host against the
// local cluster (reconcilers only: the webhooks come with `make deploy`).
type controllerProc struct {
	bin     string
	cmd     *exec.Cmd
	metrics string
	log     *syncBuffer
}

// buildController builds cmd/neonvm-controller once per test run.
func buildController(t testing.TB) string {
	t.Helper()
	return testbin.Build(t, repoRoot(), "./cmd/neonvm-controller")
}

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// startController runs the controller as the local cluster's deployment
// would: SysfsScaling by default (TCG cannot re-plug vCPUs, README),
// privileged runners, the images make images built; extraArgs are more
// flags. It refuses to start next to a running in-cluster controller: two
// controllers would fight over every VM.
func startController(t testing.TB, bin string, extraArgs ...string) *controllerProc {
	t.Helper()
	checkNotDeployed(t)
	p := &controllerProc{bin: bin, metrics: fmt.Sprintf("127.0.0.1:%d", testbin.FreePort(t)), log: &syncBuffer{}}
	args := append([]string{"--kubeconfig=" + kubeconfig, "--enable-webhooks=false",
		"--metrics-bind-address=" + p.metrics, fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", testbin.FreePort(t)),
		"--runner-image=" + Image(t, "neonvm-runner"), "--runner-privileged", "--default-cpu-scaling-mode=SysfsScaling",
		"--concurrency-limit=4"}, extraArgs...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill() })
	return p
}

// checkNotDeployed fails the test when `make deploy-local` left vmscale in
// the cluster: its controller would reconcile the test's VMs too, and with
// the controller scaled down its admission webhooks (failurePolicy Fail)
// refuse every VM.
func checkNotDeployed(t testing.TB) {
	t.Helper()
	replicas, err := TryKubectl(kubeconfig, "-n", "neonvm-system", "get", "deploy", "neonvm-controller", "-o", "jsonpath={.spec.replicas}")
	if err != nil {
		return // not deployed
	}
	if strings.TrimSpace(replicas) != "0" {
		t.Fatalf("vmscale is deployed in the cluster (deployment neonvm-system/neonvm-controller, %s replicas): run make undeploy-local first", replicas)
	}
	policies, _ := TryKubectl(kubeconfig, "get", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "-o", "jsonpath={.items[*].webhooks[*].failurePolicy}")
	if strings.Contains(policies, "Fail") {
		t.Fatalf("vmscale is deployed in the cluster with its controller scaled to 0: its webhooks (failurePolicy Fail) refuse every VM; run make undeploy-local first")
	}
}

func (p *controllerProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

func installCRDs(t testing.TB) {
	t.Helper()
	Kubectl(t, kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", filepath.Join(repoRoot(), "config", "crd", "bases"))
	for _, crd := range []string{"virtualmachines.vm.neon.tech", "virtualmachinemigrations.vm.neon.tech"} {
		// Polled: `kubectl wait` fails at once on a CRD with no conditions yet.
		poll(t, time.Minute, crd+" Established", func() error {
			out, err := TryKubectl(kubeconfig, "get", "crd", crd, "-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`)
			if err == nil && strings.TrimSpace(out) != "True" {
				err = fmt.Errorf("Established=%q", out)
			}
			return err
		})
	}
}

type vmStatus struct {
	Phase        string `json:"phase"`
	PodName      string `json:"podName"`
	PodIP        string `json:"podIP"`
	Node         string `json:"node"`
	CPUs         any    `json:"cpus"`
	MemorySize   string `json:"memorySize"`
	RestartCount int    `json:"restartCount"`
	Current      *struct {
		Revision struct {
			Value int `json:"value"`
		} `json:"revision"`
	} `json:"currentRevision"`
}

// getStatus reads the .status of kind ns/name as T (the zero T when it has
// none yet).
func getStatus[T any](kind, ns, name string) (T, error) {
	var st T
	out, err := TryKubectl(kubeconfig, "-n", ns, "get", kind, name, "-o", "jsonpath={.status}")
	if err != nil || strings.TrimSpace(out) == "" {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// waitStatus polls the status of kind ns/name until cond accepts it.
func waitStatus[T any](t testing.TB, kind, ns, name string, timeout time.Duration, what string, cond func(T) error) T {
	t.Helper()
	var st T
	poll(t, timeout, what, func() error {
		var err error
		if st, err = getStatus[T](kind, ns, name); err != nil {
			return err
		}
		return cond(st)
	})
	return st
}

func getVMStatus(ns, name string) (vmStatus, error) { return getStatus[vmStatus]("neonvm", ns, name) }

func cpuString(v any) string {
	switch c := v.(type) {
	case float64:
		return strconv.FormatFloat(c, 'f', -1, 64)
	case string:
		return c
	}
	return fmt.Sprint(v)
}

// waitVM polls the VM's status until cond accepts it.
func waitVM(t testing.TB, ns, name string, timeout time.Duration, what string, cond func(vmStatus) error) vmStatus {
	t.Helper()
	return waitStatus(t, "neonvm", ns, name, timeout, what, cond)
}

// guestQuery runs SQL in the VM's Postgres from the host (routes reach pod
// IPs).
func guestQuery(ip, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return guestQueryCtx(ctx, ip, sql)
}

// guestQueryCtx is guestQuery ending with ctx: a connection to a pod that
// vanished (a migration's source) would otherwise wait for TCP to give up.
func guestQueryCtx(ctx context.Context, ip, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", "-h", ip, "-U", "postgres", "-At", "-c", sql)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func guestMemTotalKiB(ip string) (int, error) {
	out, err := guestQuery(ip, "select pg_read_file('/proc/meminfo')")
	if err != nil {
		return 0, fmt.Errorf("psql: %w: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no MemTotal in %q", out)
}

// The controller in a real cluster: a VM reaches Running with its guest
// booted; a scale is seen by the guest and the status; a deleted runner pod
// is replaced with restartCount 1; a controller killed in the middle of a
// scale finishes it after a restart, from what the cluster and QEMU say.
func TestControllerRunsAndScalesVM(t *testing.T) {
	kc(t)
	installCRDs(t)
	ns := namespace(t, "controller")
	bin := buildController(t)
	ctl := startController(t, bin)
	defer func() {
		if t.Failed() {
			t.Logf("controller log (tail):\n%s", tail(ctl.log.String(), 40))
		}
	}()

	apply(t, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: pg
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 60
  cpuScalingMode: SysfsScaling
  guest:
    cpus: {min: 1, max: 2, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 4, use: 2}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
`, Image(t, "vm-postgres")))
	created := time.Now()
	st := waitVM(t, ns, "pg", 6*time.Minute, "VM Running", func(s vmStatus) error {
		if s.Phase != "Running" || cpuString(s.CPUs) != "1" || s.MemorySize != "512Mi" {
			return fmt.Errorf("phase %q cpus %v memory %q", s.Phase, s.CPUs, s.MemorySize)
		}
		return nil
	})
	t.Logf("VM created -> Running with status from QMP: %s (pod %s on %s)", time.Since(created).Round(100*time.Millisecond), st.PodName, st.Node)
	if st.Node == "" || st.PodIP == "" || st.RestartCount != 0 {
		t.Errorf("status %+v", st)
	}
	// Running means the runner pod is ready (QEMU runs, neonvm-daemon
	// answers); Postgres in the guest may start a moment later.
	var base int
	poll(t, 2*time.Minute, "Postgres answering in the new VM", func() error {
		var err error
		base, err = guestMemTotalKiB(st.PodIP)
		return err
	})

	// Scale up both, with a target revision.
	start := time.Now()
	Kubectl(t, kubeconfig, "-n", ns, "patch", "neonvm", "pg", "--type=json", "-p",
		`[{"op":"replace","path":"/spec/guest/cpus/use","value":2},{"op":"replace","path":"/spec/guest/memorySlots/use","value":4},`+
			`{"op":"add","path":"/spec/targetRevision","value":{"revision":{"value":124,"flags":1},"updatedAt":"2026-01-01T00:00:00Z"}}]`)
	st = waitVM(t, ns, "pg", 3*time.Minute, "status shows 2 CPUs, 1Gi", func(s vmStatus) error {
		if s.Phase != "Running" || cpuString(s.CPUs) != "2" || s.MemorySize != "1Gi" || s.Current == nil || s.Current.Revision.Value != 124 {
			return fmt.Errorf("phase %q cpus %v memory %q revision %+v", s.Phase, s.CPUs, s.MemorySize, s.Current)
		}
		return nil
	})
	t.Logf("spec patched -> status shows 2 vCPUs and 1Gi: %s", time.Since(start).Round(100*time.Millisecond))
	if out, err := guestQuery(st.PodIP, "select pg_read_file('/sys/devices/system/cpu/online')"); err != nil || out != "0-1" {
		t.Errorf("guest online CPUs %q (%v), want 0-1", out, err)
	}
	if mem, err := guestMemTotalKiB(st.PodIP); err != nil || mem-base < 500*1024 {
		t.Errorf("guest MemTotal %d KiB (%v), was %d: want +512 MiB", mem, err, base)
	}

	// A controller killed right after a scale request finishes it when it
	// comes back.
	ctl.kill()
	Kubectl(t, kubeconfig, "-n", ns, "patch", "neonvm", "pg", "--type=merge", "-p", `{"spec":{"guest":{"memorySlots":{"use":3},"cpus":{"use":1}}}}`)
	if s, _ := getVMStatus(ns, "pg"); s.MemorySize != "1Gi" {
		t.Fatalf("status changed with no controller running: %+v", s)
	}
	ctl = startController(t, bin)
	st = waitVM(t, ns, "pg", 3*time.Minute, "scale finished after a controller restart", func(s vmStatus) error {
		if s.Phase != "Running" || cpuString(s.CPUs) != "1" || s.MemorySize != "768Mi" {
			return fmt.Errorf("phase %q cpus %v memory %q", s.Phase, s.CPUs, s.MemorySize)
		}
		return nil
	})
	if out, err := guestQuery(st.PodIP, "select pg_read_file('/sys/devices/system/cpu/online')"); err != nil || out != "0" {
		t.Errorf("guest online CPUs %q (%v), want 0", out, err)
	}

	// QmpScaling: the controller hot-plugs a vCPU over QMP (one plug: TCG
	// cannot plug again after an unplug, see README).
	apply(t, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: qmp
spec:
  restartPolicy: Never
  cpuScalingMode: QmpScaling
  guest:
    cpus: {min: 1, max: 2, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 2, use: 2}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
`, Image(t, "vm-postgres")))
	waitVM(t, ns, "qmp", 6*time.Minute, "QMP-mode VM Running", func(s vmStatus) error {
		if s.Phase != "Running" || cpuString(s.CPUs) != "1" {
			return fmt.Errorf("phase %q cpus %v", s.Phase, s.CPUs)
		}
		return nil
	})
	Kubectl(t, kubeconfig, "-n", ns, "patch", "neonvm", "qmp", "--type=merge", "-p", `{"spec":{"guest":{"cpus":{"use":"1500m"}}}}`)
	q := waitVM(t, ns, "qmp", 3*time.Minute, "QMP-mode VM with 1500m", func(s vmStatus) error {
		if s.Phase != "Running" || cpuString(s.CPUs) != "1500m" {
			return fmt.Errorf("phase %q cpus %v", s.Phase, s.CPUs)
		}
		return nil
	})
	poll(t, time.Minute, "the hot-plugged vCPU online in the guest", func() error {
		out, err := guestQuery(q.PodIP, "select pg_read_file('/sys/devices/system/cpu/online')")
		if err == nil && out != "0-1" {
			err = fmt.Errorf("online %q", out)
		}
		return err
	})
	Kubectl(t, kubeconfig, "-n", ns, "delete", "neonvm", "qmp", "--wait=true", "--timeout=120s")

	// The runner pod deleted: a new one, restartCount 1.
	first := st.PodName
	Kubectl(t, kubeconfig, "-n", ns, "delete", "pod", first, "--wait=false")
	st = waitVM(t, ns, "pg", 6*time.Minute, "VM restarted in a new pod", func(s vmStatus) error {
		if s.Phase != "Running" || s.RestartCount != 1 || s.PodName == first || s.PodName == "" {
			return fmt.Errorf("phase %q restarts %d pod %q (first %s)", s.Phase, s.RestartCount, s.PodName, first)
		}
		return nil
	})
	poll(t, 2*time.Minute, "Postgres answering in the restarted VM", func() error {
		if out, err := guestQuery(st.PodIP, "select 1"); err != nil {
			return fmt.Errorf("psql: %w: %s", err, out)
		}
		return nil
	})
	metrics, err := httpGet("http://" + ctl.metrics + "/metrics")
	if err != nil || !strings.Contains(metrics, `vmscale_neonvm_vms{phase="Running"} 1`) || !strings.Contains(metrics, `vmscale_neonvm_qmp_call_duration_seconds_count{command="device_add/del"}`) || !strings.Contains(metrics, "vmscale_neonvm_qmp_call_duration_seconds") {
		t.Errorf("controller metrics (%v):\n%s", err, grepLines(metrics, "vmscale_neonvm"))
	}
}

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(body), err
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
