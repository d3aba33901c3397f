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

// options are neonvm-runner's flags.
type options struct {
	vmspec, vmstatus, cpuMode, ratio, diskCache, appendCmdline                    string
	kernel, initrd, imagesDir, mountsDir, rootDisk, runDir                        string
	accel, qmpHost, httpAddr, forwards, tap, qemuPath, daemonAddr, terminationLog string
	qemuUser                                                                      string
	diskSync                                                                      time.Duration
	useVirtioConsole, skipCgroup, podNetwork                                      bool
}

// register defines the flags on fs. The ones the controller passes in a
// runner pod are named by package runnerapi, which the controller builds
// the pod's command line from.
func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.vmspec, runnerapi.FlagVMSpec, "", "the VirtualMachine spec: JSON, gzipped, base64 (required)")
	fs.StringVar(&o.vmstatus, runnerapi.FlagVMStatus, "", "the VirtualMachine status, same encoding (optional)")
	fs.StringVar(&o.cpuMode, runnerapi.FlagCPUScalingMode, string(vmv1.CPUScalingModeQMP), "QmpScaling or SysfsScaling")
	fs.StringVar(&o.ratio, runnerapi.FlagMemhpAutoMovableRatio, "401", "memory_hotplug.auto_movable_ratio for the guest")
	fs.StringVar(&o.diskCache, runnerapi.FlagDiskCacheSettings, "cache=none", "-drive cache settings of writable disks")
	fs.StringVar(&o.appendCmdline, runnerapi.FlagAppendKernelCmdline, "", "more guest kernel arguments")
	fs.BoolVar(&o.useVirtioConsole, runnerapi.FlagUseVirtioConsole, false, "guest console on hvc0 instead of ttyS1")
	fs.BoolVar(&o.skipCgroup, runnerapi.FlagSkipCgroupManagement, false, "accepted for NeonVM compatibility; vmscale's runner does not manage a QEMU cgroup")
	fs.StringVar(&o.kernel, "kernelpath", "/vm/kernel/vmlinux", "guest kernel")
	fs.StringVar(&o.initrd, "initrd", "/vm/kernel/initrd.img", "guest initramfs (empty: none)")
	fs.StringVar(&o.imagesDir, "images-dir", "/vm/images", "where the disks QEMU opens live")
	fs.StringVar(&o.mountsDir, "mounts-dir", "/vm/mounts", "contents of configMap/secret disks, at <dir>/<mountPath>")
	fs.StringVar(&o.rootDisk, "rootdisk", "", "root disk image (default <images-dir>/rootdisk.qcow2; another path gets a copy-on-write overlay)")
	fs.StringVar(&o.runDir, "run-dir", "/vm", "where the runner's sockets go")
	fs.StringVar(&o.accel, "accel", "auto", "auto (probe KVM by booting the kernel), kvm or tcg")
	fs.StringVar(&o.qmpHost, "qmp-host", "0.0.0.0", "address QMP listens on")
	fs.StringVar(&o.httpAddr, "http-addr", "", "runner API address (default :<spec.runnerPort>)")
	fs.StringVar(&o.forwards, "forward", "", "user-mode networking forwards, HOSTADDR:PORT=GUESTPORT,... (a local runner; empty: tap)")
	fs.StringVar(&o.tap, "tap", "", "an existing tap device for the guest NIC")
	fs.BoolVar(&o.podNetwork, runnerapi.FlagPodNetwork, false, "set up the runner pod's guest network: bridge + tap, DHCP, the guest's ports DNATed from eth0, egress masqueraded")
	fs.StringVar(&o.qemuPath, "qemu", "", "QEMU binary (default by architecture)")
	fs.DurationVar(&o.diskSync, runnerapi.FlagDiskSyncInterval, runner.DefaultDiskSyncInterval, "how often watched configMap/secret disks are re-synced into the guest")
	fs.StringVar(&o.qemuUser, runnerapi.FlagQEMUUser, "", "user QEMU drops to after start-up (the runner image has qemu); empty: the runner's")
	fs.StringVar(&o.terminationLog, "termination-log", runner.DefaultTerminationLog, "where the report on QEMU's end goes for the kubelet, if the file exists (the container's terminationMessagePath)")
	fs.StringVar(&o.daemonAddr, "daemon-addr", "169.254.254.254:25183", "neonvm-daemon in the guest, as the runner reaches it (SysfsScaling)")
}

// config is the runner.Config the flags and the environment (getenv; the
// runner pod's, set by the controller) say, without the spec and status
// (run decodes those).
func (o *options) config(getenv func(string) string, log *slog.Logger) runner.Config {
	return runner.Config{
		QEMUPath: o.qemuPath, QEMUUser: o.qemuUser, DiskSyncInterval: o.diskSync, Kernel: o.kernel, Initrd: o.initrd, Accel: o.accel, QMPHost: o.qmpHost,
		RunDir: o.runDir, CPUScalingMode: vmv1.CPUScalingMode(o.cpuMode), MemhpAutoMovableRatio: o.ratio,
		UseVirtioConsole: o.useVirtioConsole, DiskCache: o.diskCache, AppendKernelCmdline: o.appendCmdline,
		TapName: o.tap, PodNetwork: o.podNetwork, DaemonAddr: o.daemonAddr, TerminationLog: o.terminationLog, ReceiveMigration: getenv(runnerapi.EnvReceiveMigration) == "true",
		PodName: getenv(runnerapi.EnvPodName), Log: log,
		Dirs: runner.Dirs{Images: o.imagesDir, Mounts: o.mountsDir, BaseRootDisk: o.rootDisk},
	}
}

func main() {
	var o options
	o.register(flag.CommandLine)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	if err := run(log, o.config(os.Getenv, log), o.vmspec, o.vmstatus, o.httpAddr, o.forwards); err != nil {
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
