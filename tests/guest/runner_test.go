package guest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/guestexec"
	"github.com/vmscale/vmscale/neonvm/runner"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
	"github.com/vmscale/vmscale/tests/testbin"
)

func buildRunner(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, repoRoot(), "./cmd/neonvm-runner")
}

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

func testSpec() vmv1.VirtualMachineSpec {
	return vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		CPUs:           vmv1.CPUs{Min: 1000, Max: 2000, Use: 1000},
		MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 4, Use: 2},
		RootDisk:       vmv1.RootDisk{Image: "vmscale-guest", Size: resource.MustParse("3Gi")},
		Env:            []vmv1.EnvVar{{Name: "GREETING", Value: "it's me"}},
	}, Disks: []vmv1.Disk{
		{Name: "scratch", MountPath: "/scratch", DiskSource: vmv1.DiskSource{EmptyDisk: &vmv1.EmptyDiskSource{Size: resource.MustParse("64Mi")}}},
		{Name: "cache", MountPath: "/cache", DiskSource: vmv1.DiskSource{Tmpfs: &vmv1.TmpfsDiskSource{Size: resource.MustParse("32Mi")}}},
	}}
}

type runnerProc struct {
	cmd    *exec.Cmd
	out    *syncBuf
	exited chan error
	api    string
	run    string
}

func startRunner(t *testing.T, spec vmv1.VirtualMachineSpec, extra ...string) *runnerProc {
	t.Helper()
	img := guestImage(t)
	dir := t.TempDir()
	spec.QMP, spec.QMPManual = int32(testbin.FreePort(t)), int32(testbin.FreePort(t))
	enc, err := runnerapi.EncodeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	p := &runnerProc{out: &syncBuf{}, exited: make(chan error, 1),
		api: fmt.Sprintf("127.0.0.1:%d", testbin.FreePort(t)), run: filepath.Join(dir, "run")}
	args := append([]string{
		"-vmspec", enc, "-accel", "tcg", "-qmp-host", "127.0.0.1",
		"-kernelpath", filepath.Join(img, "vmlinux"), "-initrd", filepath.Join(img, "initrd.img"),
		"-rootdisk", filepath.Join(img, "disk.qcow2"), "-images-dir", filepath.Join(dir, "images"),
		"-run-dir", p.run, "-http-addr", p.api,
		"-forward", fmt.Sprintf("127.0.0.1:%d=5432", testbin.FreePort(t)),
	}, extra...)
	p.cmd = exec.Command(buildRunner(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// Its own process group, so a failed test stops QEMU and dnsmasq too.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("runner output:\n%s", p.out.String())
		}
	})
	return p
}

func (p *runnerProc) get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.api + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (p *runnerProc) post(path, body string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post("http://"+p.api+path, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// waitReady polls the runner's /ready until it answers 200.
func (p *runnerProc) waitReady(t *testing.T, what string) {
	t.Helper()
	poll(t, bootTimeout, what, func() error {
		code, body, err := p.get("/ready")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
}

func (p *runnerProc) exec(command string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := guestexec.Exec(ctx, filepath.Join(p.run, runner.ExecSocket), command)
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return r.Output, fmt.Errorf("exit %d: %s", r.ExitCode, r.Output)
	}
	return r.Output, nil
}

// The runner as a local process: disks prepared (root disk grown, an empty
// ext4 disk and a tmpfs mounted where the spec says), the guest boots, the
// runner API answers, and SIGTERM powers the guest off cleanly.
func TestRunnerRunsTheGuest(t *testing.T) {
	termLog := terminationLog(t)
	p := startRunner(t, testSpec(), "-termination-log", termLog)
	p.waitReady(t, "runner /ready")
	poll(t, bootTimeout, "Postgres in the guest", func() error {
		_, err := p.exec("/usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1")
		return err
	})
	out, err := p.exec("df -k /scratch | tail -1; grep -c ' /cache tmpfs' /proc/mounts; cat /sys/block/vda/size")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out)
	if len(lines) < 3 || lines[len(lines)-2] != "1" {
		t.Fatalf("disk mounts in the guest: %q", out)
	}
	if sectors := lines[len(lines)-1]; sectors != fmt.Sprint(3<<30/512) {
		t.Errorf("root disk is %s sectors; want 3Gi from spec.guest.rootDisk.size", sectors)
	}
	if !strings.Contains(out, "/scratch") {
		t.Errorf("the emptyDisk is not mounted at /scratch: %q", out)
	}

	// The runner API.
	if code, body, _ := p.get("/cpu_current"); code != 200 || strings.TrimSpace(body) != `{"VCPUs":1}` {
		t.Errorf("/cpu_current = %d %s; want the minimum", code, body)
	}
	if code, body, _ := p.post("/cpu_change", `{"VCPUs":"1500m"}`); code != 200 {
		t.Errorf("/cpu_change 1500m = %d %s", code, body)
	}
	if _, body, _ := p.get("/cpu_current"); strings.TrimSpace(body) != `{"VCPUs":"1500m"}` {
		t.Errorf("/cpu_current after the change = %s", body)
	}
	if code, body, _ := p.post("/cpu_change", `{"vcpus": true`); code != 400 || !strings.Contains(body, "malformed body") {
		t.Errorf("malformed /cpu_change = %d %s; want 400 naming the problem", code, body)
	}
	if code, body, _ := p.post("/cpu_change", `{"VCPUs":3}`); code != 400 || !strings.Contains(body, "outside spec.guest.cpus 1..2") {
		t.Errorf("out-of-range /cpu_change = %d %s; want 400", code, body)
	}

	// SIGTERM: clean guest power-off, runner exits 0.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("runner exit after SIGTERM: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("runner still running 2 minutes after SIGTERM")
	}
	if !strings.Contains(p.out.String(), "server stopped") {
		t.Errorf("the guest did not stop Postgres cleanly before powering off")
	}
	// Why QEMU stopped, for the kubelet's termination message.
	report := readReport(t, termLog)
	for _, want := range []string{"QEMU exited with status 0: the guest powered off (SHUTDOWN reason guest-shutdown)", "last QMP events:", "POWERDOWN", "last output:"} {
		if !strings.Contains(report, want) {
			t.Errorf("termination message lacks %q:\n%s", want, report)
		}
	}
}

// terminationLog is an empty file standing for the kubelet's
// /dev/termination-log.
func terminationLog(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "termination-log")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readReport(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 || len(b) > 4096 {
		t.Fatalf("termination message of %d bytes; want 1..4096 (the kubelet's limit)", len(b))
	}
	return string(b)
}

func TestRunnerRejectsBadSpecs(t *testing.T) {
	bin := buildRunner(t)
	huge := testSpec()
	huge.Guest.MemorySlotSize = resource.MustParse("1Gi")
	huge.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 512, Use: 1}
	hugeEnc, _ := runnerapi.EncodeSpec(huge)
	inverted := testSpec()
	inverted.Guest.CPUs.Min = 4000
	invEnc, _ := runnerapi.EncodeSpec(inverted)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"not base64", []string{"-vmspec", "%%%"}, "-vmspec: not base64"},
		{"not gzip", []string{"-vmspec", "aGVsbG8="}, "-vmspec: not gzip"},
		{"memory past the host's", []string{"-vmspec", hugeEnc}, "spec.guest.memorySlots.max: 512 slots of 1Gi (512Gi) exceed this host's memory"},
		{"cpu bounds inverted", []string{"-vmspec", invEnc}, "spec.guest.cpus.min"},
		{"no spec", nil, "-vmspec is required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := exec.Command(bin, append(c.args, "-accel", "tcg", "-run-dir", t.TempDir(), "-images-dir", t.TempDir())...).CombinedOutput()
			if err == nil {
				t.Fatalf("runner accepted it:\n%s", out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("output does not name the problem %q:\n%s", c.want, out)
			}
		})
	}
}

// The accelerator comes from a real boot under KVM, never from /dev/kvm
// existing; on these machines /dev/kvm cannot boot a stock guest.
func TestKVMProbe(t *testing.T) {
	img := guestImage(t)
	start := time.Now()
	ok, why := runner.ProbeKVM(context.Background(), "qemu-system-x86_64", filepath.Join(img, "vmlinux"), 10*time.Second)
	if time.Since(start) > 20*time.Second {
		t.Fatalf("the probe took %s; its deadline is 10s", time.Since(start))
	}
	if why == "" {
		t.Fatal("the probe gave no reason")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && ok {
		t.Fatalf("KVM reported working without /dev/kvm: %s", why)
	}
	t.Logf("KVM probe: works=%v (%s)", ok, why)
}

type syncBuf struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// SysfsScaling: the guest boots with every vCPU and the runner's
// /cpu_change onlines and offlines them through neonvm-daemon — as many
// times as needed, which QMP hotplug cannot do under TCG here.
func TestRunnerSysfsScaling(t *testing.T) {
	daemonPort := testbin.FreePort(t)
	spec := testSpec()
	spec.Disks = nil
	termLog := terminationLog(t)
	p := startRunner(t, spec, "-cpu-scaling-mode", "SysfsScaling", "-termination-log", termLog,
		"-forward", fmt.Sprintf("127.0.0.1:%d=25183", daemonPort),
		"-daemon-addr", fmt.Sprintf("127.0.0.1:%d", daemonPort))
	p.waitReady(t, "runner /ready (QEMU and neonvm-daemon)")
	if _, body, _ := p.get("/cpu_current"); strings.TrimSpace(body) != `{"VCPUs":1}` {
		t.Fatalf("/cpu_current at boot = %s; want 1 (kernel maxcpus=1)", body)
	}
	for cycle := 0; cycle < 3; cycle++ {
		for _, step := range []struct{ body, online, current string }{
			{`{"VCPUs":2}`, "0-1", `{"VCPUs":2}`},
			{`{"VCPUs":"1"}`, "0", `{"VCPUs":1}`},
		} {
			if code, body, err := p.post("/cpu_change", step.body); err != nil || code != 200 {
				t.Fatalf("cycle %d: /cpu_change %s = %d %s %v", cycle, step.body, code, body, err)
			}
			out, err := p.exec("cat /sys/devices/system/cpu/online")
			if err != nil || strings.TrimSpace(out) != step.online {
				t.Fatalf("cycle %d: guest online CPUs %q, %v; want %s", cycle, out, err, step.online)
			}
			if _, body, _ := p.get("/cpu_current"); strings.TrimSpace(body) != step.current {
				t.Fatalf("cycle %d: /cpu_current = %s; want %s", cycle, body, step.current)
			}
		}
	}

	// The guest resets itself (as a kernel panic does with panic=-1):
	// -no-reboot makes QEMU exit, and the runner says why.
	_, _ = p.exec("echo 1 > /proc/sys/kernel/sysrq; echo b > /proc/sysrq-trigger")
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatal("runner still running a minute after the guest reset")
	}
	report := readReport(t, termLog)
	if !strings.Contains(report, "QEMU exited with status 0: the guest reset itself") || !strings.Contains(report, "guest-reset") {
		t.Errorf("termination message after a guest reset:\n%s", report)
	}
}
