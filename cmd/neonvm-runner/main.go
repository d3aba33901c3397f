// Command neonvm-runner runs one VirtualMachine's QEMU: in its runner pod,
// or as a local process for tests and development (-forward, -rootdisk).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qemu"
	"github.com/vmscale/vmscale/neonvm/runner"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

func main() {
	var (
		vmspec, vmstatus, cpuMode, ratio, diskCache, appendCmdline    string
		kernel, initrd, imagesDir, mountsDir, rootDisk, runDir        string
		accel, qmpHost, httpAddr, forwards, tap, qemuPath, daemonAddr string
		qemuUser                                                      string
		diskSync                                                      time.Duration
		useVirtioConsole, skipCgroup, podNetwork                      bool
	)
	flag.StringVar(&vmspec, "vmspec", "", "the VirtualMachine spec: JSON, gzipped, base64 (required)")
	flag.StringVar(&vmstatus, "vmstatus", "", "the VirtualMachine status, same encoding (optional)")
	flag.StringVar(&cpuMode, "cpu-scaling-mode", string(vmv1.CPUScalingModeQMP), "QmpScaling or SysfsScaling")
	flag.StringVar(&ratio, "memhp-auto-movable-ratio", "401", "memory_hotplug.auto_movable_ratio for the guest")
	flag.StringVar(&diskCache, "qemu-disk-cache-settings", "cache=none", "-drive cache settings of writable disks")
	flag.StringVar(&appendCmdline, "appendKernelCmdline", "", "more guest kernel arguments")
	flag.BoolVar(&useVirtioConsole, "use-virtio-console", false, "guest console on hvc0 instead of ttyS1")
	flag.BoolVar(&skipCgroup, "skip-cgroup-management", false, "accepted for NeonVM compatibility; vmscale's runner does not manage a QEMU cgroup")
	flag.StringVar(&kernel, "kernelpath", "/vm/kernel/vmlinux", "guest kernel")
	flag.StringVar(&initrd, "initrd", "/vm/kernel/initrd.img", "guest initramfs (empty: none)")
	flag.StringVar(&imagesDir, "images-dir", "/vm/images", "where the disks QEMU opens live")
	flag.StringVar(&mountsDir, "mounts-dir", "/vm/mounts", "contents of configMap/secret disks, at <dir>/<mountPath>")
	flag.StringVar(&rootDisk, "rootdisk", "", "root disk image (default <images-dir>/rootdisk.qcow2; another path gets a copy-on-write overlay)")
	flag.StringVar(&runDir, "run-dir", "/vm", "where the runner's sockets go")
	flag.StringVar(&accel, "accel", "auto", "auto (probe KVM by booting the kernel), kvm or tcg")
	flag.StringVar(&qmpHost, "qmp-host", "0.0.0.0", "address QMP listens on")
	flag.StringVar(&httpAddr, "http-addr", "", "runner API address (default :<spec.runnerPort>)")
	flag.StringVar(&forwards, "forward", "", "user-mode networking forwards, HOSTADDR:PORT=GUESTPORT,... (a local runner; empty: tap)")
	flag.StringVar(&tap, "tap", "", "an existing tap device for the guest NIC")
	flag.BoolVar(&podNetwork, "pod-network", false, "set up the runner pod's guest network: bridge + tap, DHCP, the guest's ports DNATed from eth0, egress masqueraded")
	flag.StringVar(&qemuPath, "qemu", "", "QEMU binary (default by architecture)")
	flag.DurationVar(&diskSync, "disk-sync-interval", runner.DefaultDiskSyncInterval, "how often watched configMap/secret disks are re-synced into the guest")
	flag.StringVar(&qemuUser, "qemu-user", "", "user QEMU drops to after start-up (the runner image has qemu); empty: the runner's")
	flag.StringVar(&daemonAddr, "daemon-addr", "169.254.254.254:25183", "neonvm-daemon in the guest, as the runner reaches it (SysfsScaling)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	if err := run(log, runner.Config{
		QEMUPath: qemuPath, QEMUUser: qemuUser, DiskSyncInterval: diskSync, Kernel: kernel, Initrd: initrd, Accel: accel, QMPHost: qmpHost,
		RunDir: runDir, CPUScalingMode: vmv1.CPUScalingMode(cpuMode), MemhpAutoMovableRatio: ratio,
		UseVirtioConsole: useVirtioConsole, DiskCache: diskCache, AppendKernelCmdline: appendCmdline,
		TapName: tap, PodNetwork: podNetwork, DaemonAddr: daemonAddr, ReceiveMigration: os.Getenv(runnerapi.EnvReceiveMigration) == "true",
		PodName: os.Getenv(runnerapi.EnvPodName), Log: log,
		Dirs: runner.Dirs{Images: imagesDir, Mounts: mountsDir, BaseRootDisk: rootDisk},
	}, vmspec, vmstatus, httpAddr, forwards); err != nil {
		log.Error("neonvm-runner failed", "error", err.Error())
		fmt.Fprintln(os.Stderr, "neonvm-runner:", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, cfg runner.Config, vmspec, vmstatus, httpAddr, forwards string) error {
	if vmspec == "" {
		return fmt.Errorf("-vmspec is required")
	}
	if err := runnerapi.DecodeSpec(vmspec, &cfg.Spec); err != nil {
		return fmt.Errorf("-vmspec: %w", err)
	}
	if vmstatus != "" {
		if err := runnerapi.DecodeSpec(vmstatus, &cfg.Status); err != nil {
			return fmt.Errorf("-vmstatus: %w", err)
		}
	}
	if cfg.CPUScalingMode != vmv1.CPUScalingModeQMP && cfg.CPUScalingMode != vmv1.CPUScalingModeSysfs {
		return fmt.Errorf("-cpu-scaling-mode: %q is neither QmpScaling nor SysfsScaling", cfg.CPUScalingMode)
	}
	if cfg.Dirs.BaseRootDisk == "" {
		cfg.Dirs.BaseRootDisk = filepath.Join(cfg.Dirs.Images, "rootdisk.qcow2")
	}
	if httpAddr == "" {
		port := cfg.Spec.RunnerPort
		if port == 0 {
			port = vmv1.DefaultRunnerPort
		}
		httpAddr = ":" + strconv.Itoa(int(port))
	}
	cfg.HTTPAddr = httpAddr
	fw, err := parseForwards(forwards)
	if err != nil {
		return err
	}
	cfg.Forwards = fw
	if cfg.QEMUUser != "" {
		if _, err := user.Lookup(cfg.QEMUUser); err != nil {
			return fmt.Errorf("-qemu-user: %w", err)
		}
	}
	if cfg.PodName == "" {
		cfg.PodName, _ = os.Hostname()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return runner.Run(ctx, cfg)
}

func parseForwards(s string) ([]qemu.Forward, error) {
	var out []qemu.Forward
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		host, guest, ok := strings.Cut(item, "=")
		addr, port, ok2 := strings.Cut(host, ":")
		hp, err1 := strconv.Atoi(port)
		gp, err2 := strconv.Atoi(guest)
		if !ok || !ok2 || err1 != nil || err2 != nil || hp <= 0 || gp <= 0 {
			return nil, fmt.Errorf("-forward: %q is not HOSTADDR:PORT=GUESTPORT", item)
		}
		out = append(out, qemu.Forward{HostAddr: addr, HostPort: hp, GuestPort: gp})
	}
	return out, nil
}
