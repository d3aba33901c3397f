// Package guest boots vmscale's real guest image under real QEMU (TCG on
// these machines) and checks what the guest itself sees as vCPUs and memory
// change over QMP. The runner binary's own tests build on the same helpers.
package guest

import (
	"bytes"
	"context"
	"fmt"
	testpoll "github.com/vmscale/vmscale/tests/poll"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/guestexec"
	"github.com/vmscale/vmscale/neonvm/qemu"
	"github.com/vmscale/vmscale/neonvm/qmp"
	"github.com/vmscale/vmscale/tests/testbin"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// guestImage builds (or finds in the cache) the test guest.
func guestImage(t testing.TB) string {
	t.Helper()
	imageOnce.Do(func() {
		cmd := exec.Command(filepath.Join(repoRoot(), "hack", "guest", "build.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		imageDir, imageErr = strings.TrimSpace(string(out)), err
	})
	if imageErr != nil {
		t.Fatalf("build the guest image: %v", imageErr)
	}
	return imageDir
}

// VM is a running test guest.
type VM struct {
	QMP      *qmp.Client
	Exec     string // exec channel socket
	PGPort   int    // host port forwarded to the guest's 5432
	Metrics  int    // host port forwarded to the guest's 9100
	Console  *bytes.Buffer
	exited   chan struct{}
	cmd      *exec.Cmd
	consoleM sync.Mutex
}

// bootVM starts the test guest with cpus and 256 MiB memory slots.
func bootVM(t testing.TB, cpus vmv1.CPUs, slots vmv1.MemorySlots) *VM {
	t.Helper()
	return bootVMWith(t, cpus, slots, "")
}

// bootVMWith starts the test guest; with incoming set ("tcp:127.0.0.1:N")
// QEMU waits for a live migration there instead of booting.
func bootVMWith(t testing.TB, cpus vmv1.CPUs, slots vmv1.MemorySlots, incoming string) *VM {
	t.Helper()
	img := guestImage(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "rootdisk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
		"-b", filepath.Join(img, "disk.qcow2"), disk).CombinedOutput(); err != nil {
		t.Fatalf("overlay disk: %v: %s", err, out)
	}
	vmObj := &vmv1.VirtualMachine{}
	vmObj.Name = "test"
	vmObj.Spec.QMP, vmObj.Spec.QMPManual = int32(testbin.FreePort(t)), int32(testbin.FreePort(t))
	vmObj.Spec.Guest = vmv1.Guest{CPUs: cpus, MemorySlotSize: resource.MustParse("256Mi"), MemorySlots: slots}
	vm := &VM{Exec: filepath.Join(dir, "exec.sock"), PGPort: testbin.FreePort(t), Metrics: testbin.FreePort(t), Console: &bytes.Buffer{}, exited: make(chan struct{})}
	qc, err := qemu.Build(vmObj, qemu.Config{
		Accel:        qemu.AccelTCG,
		QMPHost:      "127.0.0.1",
		KernelPath:   filepath.Join(img, "vmlinux"),
		InitrdPath:   filepath.Join(img, "initrd.img"),
		RootDiskPath: disk,
		ExecSocket:   vm.Exec,
		Hostname:     "vm-test",
		Network: qemu.Network{Forwards: []qemu.Forward{
			{HostAddr: "127.0.0.1", HostPort: vm.PGPort, GuestPort: 5432},
			{HostAddr: "127.0.0.1", HostPort: vm.Metrics, GuestPort: 9100},
		}},
		Incoming: incoming,
	})
	if err != nil {
		t.Fatal(err)
	}
	vm.cmd = exec.Command(qc.Path, qc.Args...)
	w := &lockedWriter{mu: &vm.consoleM, buf: vm.Console}
	vm.cmd.Stdout, vm.cmd.Stderr = w, w
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = vm.cmd.Wait(); close(vm.exited) }()
	t.Cleanup(func() {
		_ = vm.cmd.Process.Kill()
		<-vm.exited
		if t.Failed() {
			t.Logf("guest console:\n%s", vm.console())
		}
	})
	poll(t, 30*time.Second, "QMP", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := qmp.Dial(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(int(vmObj.Spec.QMP)))
		if err != nil {
			return err
		}
		vm.QMP = c
		return nil
	})
	t.Cleanup(func() { _ = vm.QMP.Close() })
	return vm
}

func (vm *VM) console() string {
	vm.consoleM.Lock()
	defer vm.consoleM.Unlock()
	return vm.Console.String()
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// run runs a shell command in the guest.
func (vm *VM) run(t testing.TB, command string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := guestexec.Exec(ctx, vm.Exec, command)
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return r.Output, fmt.Errorf("%q exited %d: %s %s", command, r.ExitCode, r.Output, r.Error)
	}
	return r.Output, nil
}

func poll(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	testpoll.Until(t, timeout, 250*time.Millisecond, what, cond)
}

func qctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
