package runner

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qemu"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestGuestVMScalingMode(t *testing.T) {
	cfg := Config{Spec: vmv1.VirtualMachineSpec{RunnerPort: 1}}
	if vm, mode := guestVM(cfg); mode != vmv1.CPUScalingModeQMP || *vm.Spec.CPUScalingMode != mode || vm.Spec.RunnerPort != 1 {
		t.Errorf("default mode %s in %+v; want QmpScaling", mode, vm.Spec)
	}
	cfg.CPUScalingMode = vmv1.CPUScalingModeSysfs
	if vm, mode := guestVM(cfg); mode != vmv1.CPUScalingModeSysfs || *vm.Spec.CPUScalingMode != mode {
		t.Errorf("told SysfsScaling, got %s", mode)
	}
	if cfg.Spec.CPUScalingMode != nil {
		t.Error("guestVM changed the runner's spec")
	}
}

func TestQEMUConfig(t *testing.T) {
	cfg := Config{
		Spec: vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
			CPUs: vmv1.CPUs{Min: 1000, Max: 4000, Use: 1000}, MemorySlotSize: resource.MustParse("256Mi"),
			MemorySlots: vmv1.MemorySlots{Min: 2, Max: 8, Use: 2},
		}},
		Status:  vmv1.VirtualMachineStatus{CPUs: ptr.To(vmv1.MilliCPU(2000)), MemorySize: resource.NewQuantity(4*256<<20, resource.BinarySI)},
		PodName: "db-abcde", RunDir: "/vm", Kernel: "/k", AppendKernelCmdline: "quiet",
		Forwards: []qemu.Forward{{HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22}},
	}
	vm, _ := guestVM(cfg)
	q := qemuConfig(cfg, vm, qemu.AccelTCG, "/root.qcow2", nil, nil, quietLog)
	if q.QMPSigtermSocket != filepath.Join("/vm", SigtermSocket) || q.ExecSocket != filepath.Join("/vm", ExecSocket) ||
		q.Hostname != "vm-db-abcde" || len(q.ExtraKernelArgs) != 1 || q.ExtraKernelArgs[0] != "quiet" ||
		q.Network.TapName != "" || q.Network.VhostNet || len(q.Network.Forwards) != 1 || q.RootDiskPath != "/root.qcow2" {
		t.Errorf("qemu.Config %+v", q)
	}
	if q.Incoming != "" || q.HotpluggedCPUs != nil || q.VirtioMemRequestedBytes != 0 {
		t.Errorf("not a migration target, yet %q %v %d", q.Incoming, q.HotpluggedCPUs, q.VirtioMemRequestedBytes)
	}
	cfg.ReceiveMigration = true
	q = qemuConfig(cfg, vm, qemu.AccelTCG, "/root.qcow2", nil, nil, quietLog)
	if q.Incoming != "tcp:0:20187" || len(q.HotpluggedCPUs) != 1 || q.CPUDriver == "" || q.VirtioMemRequestedBytes != 2*256<<20 {
		t.Errorf("migration target: %q %v %q %d", q.Incoming, q.HotpluggedCPUs, q.CPUDriver, q.VirtioMemRequestedBytes)
	}
}

func startProcess(t *testing.T, name string, args ...string) *qemuProcess {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Skipf("%s: %v", name, err)
	}
	q := &qemuProcess{cmd: cmd, exited: make(chan error, 1)}
	go func() { q.exited <- cmd.Wait() }()
	return q
}

// How the runner ends, with a process standing in for QEMU.
func TestWaitForExit(t *testing.T) {
	noSock := filepath.Join(t.TempDir(), "none.sock")
	cfg := Config{Spec: vmv1.VirtualMachineSpec{TerminationGracePeriodSeconds: ptr.To[int64](5)}}

	if err := waitForExit(context.Background(), cfg, startProcess(t, "true"), nil, noSock, quietLog); err != nil {
		t.Errorf("guest powered off by itself: %v", err)
	}
	err := waitForExit(context.Background(), cfg, startProcess(t, "sh", "-c", "exit 3"), nil, noSock, quietLog)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") {
		t.Errorf("QEMU failing: %v", err)
	}
	apiErr := make(chan error, 1)
	apiErr <- io.ErrUnexpectedEOF
	if err := waitForExit(context.Background(), cfg, startProcess(t, "sleep", "60"), apiErr, noSock, quietLog); err != io.ErrUnexpectedEOF {
		t.Errorf("API server failing: %v; want its error, QEMU killed", err)
	}
	// SIGTERM with no QMP to power the guest off through: QEMU is killed
	// at once, not after the grace period.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := waitForExit(ctx, cfg, startProcess(t, "sleep", "60"), nil, noSock, quietLog); err != nil {
		t.Errorf("stopped without QMP: %v", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("stopping took %v", took)
	}
}
