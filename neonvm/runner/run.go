package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/ipam"
	"github.com/vmscale/vmscale/neonvm/qemu"
	"github.com/vmscale/vmscale/neonvm/qmp"
)

// Config is everything the runner is told.
type Config struct {
	Spec vmv1.VirtualMachineSpec
	// Status is the VM's status when the pod was made (-vmstatus): a
	// migration target starts with the source's vCPUs and memory from it.
	Status  vmv1.VirtualMachineStatus
	PodName string

	QEMUPath string
	// QEMUUser is the user QEMU drops to once it has opened its disks and
	// devices (qemu in the runner image); empty keeps the runner's.
	QEMUUser string
	Kernel   string
	Initrd   string
	Dirs     Dirs
	// Accel is auto (probe KVM), kvm or tcg.
	Accel string

	QMPHost  string
	HTTPAddr string
	// RunDir holds the runner's sockets (QMP for SIGTERM, exec channel).
	RunDir string

	CPUScalingMode        vmv1.CPUScalingMode
	MemhpAutoMovableRatio string
	UseVirtioConsole      bool
	DiskCache             string
	AppendKernelCmdline   string

	// Forwards are user-mode networking port forwards (a runner run as a
	// local process); TapName attaches the guest to a tap device instead.
	Forwards []qemu.Forward
	TapName  string
	// PodNetwork sets up the runner pod's guest network (bridge, tap,
	// DHCP, DNAT of the guest's ports from eth0) and attaches the guest
	// to it; it overrides TapName and Forwards.
	PodNetwork bool

	// DaemonAddr is neonvm-daemon's host:port as the runner reaches it
	// (169.254.254.254:25183 on the pod's tap network).
	DaemonAddr string
	// DiskSyncInterval is how often watched disks are re-synced into the
	// guest (default DefaultDiskSyncInterval).
	DiskSyncInterval time.Duration

	// ReceiveMigration starts QEMU waiting for a migration on
	// 0.0.0.0:20187.
	ReceiveMigration bool

	// TerminationLog is where the report on QEMU's end is written for the
	// kubelet (the container's terminationMessagePath); empty: nowhere.
	TerminationLog string

	Log *slog.Logger
}

// Sockets the runner creates in RunDir.
const (
	SigtermSocket = "qmp-sigterm.sock"
	EventsSocket  = "qmp-events.sock"
	ExecSocket    = "exec.sock"
)

// Run prepares and runs the VM until ctx ends (SIGTERM), when it powers the
// guest off and waits for QEMU, or until QEMU exits by itself.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if err := checkThisHost(&cfg.Spec); err != nil {
		return err
	}
	if cfg.QEMUPath == "" {
		cfg.QEMUPath = qemu.Binary(runtime.GOARCH)
	}
	accel, why := ChooseAccel(ctx, cfg.Accel, cfg.QEMUPath, cfg.Kernel)
	log.Info("accelerator chosen", "accel", accel, "why", why)
	root, disks, err := prepareDisks(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("runner directory: %w", err)
	}
	if cfg.PodNetwork {
		stopDHCP, err := setupPodNetwork(ctx, &cfg, log)
		if err != nil {
			return err
		}
		defer stopDHCP()
	}
	extraNIC, err := setupExtraNetwork(ctx, cfg, log)
	if err != nil {
		return err
	}
	vm, mode := guestVM(cfg)
	qcfg := qemuConfig(cfg, vm, accel, root, disks, extraNIC, log)
	report := NewExitReport(16 << 10)
	q, err := startQEMU(cfg, vm, qcfg, report.Output, log)
	if err != nil {
		return err
	}
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	go report.Watch(apiCtx, qcfg.QMPEventsSocket, log)
	apiErr := serveAPI(apiCtx, cfg, mode, qcfg.QMPSigtermSocket, log)
	err = waitForExit(ctx, cfg, q, apiErr, qcfg.QMPSigtermSocket, log)
	reportExit(cfg, report, q, err, log)
	return err
}

// reportExit logs why QEMU stopped and leaves it as the container's
// termination message.
func reportExit(cfg Config, report *ExitReport, q *qemuProcess, err error, log *slog.Logger) {
	msg := report.Message(q.cmd.ProcessState, err)
	level := slog.LevelInfo
	if r := report.Reason(); err != nil || (r != "guest-shutdown" && r != "host-qmp-quit") {
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, "QEMU stopped", "report", msg)
	if werr := WriteTerminationMessage(cfg.TerminationLog, msg); werr != nil {
		log.Warn("the report on QEMU's end is only in this log", "err", werr)
	}
}

// checkThisHost rejects a spec this host cannot run (CheckHost with the
// host's memory).
func checkThisHost(spec *vmv1.VirtualMachineSpec) error {
	mem, err := HostMemory()
	if err != nil {
		return fmt.Errorf("read host memory: %w", err)
	}
	return CheckHost(spec, mem)
}

// prepareDisks is PrepareDisks, with how long it took in the log.
func prepareDisks(ctx context.Context, cfg Config, log *slog.Logger) (string, []qemu.Disk, error) {
	prep := time.Now()
	root, disks, err := PrepareDisks(ctx, &cfg.Spec, cfg.Dirs)
	if err != nil {
		return "", nil, err
	}
	if cfg.QEMUUser != "" {
		// QEMU reopens the writable disks after it has dropped to its
		// user: at the end of an incoming migration, and on a resize.
		if err := chownDisks(cfg.QEMUUser, root, disks); err != nil {
			return "", nil, err
		}
	}
	log.Info("disks prepared", "disks", len(disks)+1, "took", time.Since(prep).Round(time.Millisecond))
	return root, disks, nil
}

// setupPodNetwork sets up the runner pod's guest network and starts the
// guest's DHCP server; the guest's NIC goes on its tap (cfg.TapName, no
// user-mode forwards). The function returned stops the DHCP server.
func setupPodNetwork(ctx context.Context, cfg *Config, log *slog.Logger) (stop func(), err error) {
	var ports []int
	for _, p := range cfg.Spec.Guest.Ports {
		if p.Protocol != vmv1.ProtocolUDP {
			ports = append(ports, p.Port)
		}
	}
	pn := DefaultPodNetwork(ports)
	if err := pn.Setup(ctx); err != nil {
		return nil, err
	}
	dhcp := pn.DHCPCommand()
	dnsmasq := exec.Command(dhcp[0], dhcp[1:]...)
	dnsmasq.Stdout, dnsmasq.Stderr = os.Stderr, os.Stderr
	dnsmasq.SysProcAttr = diesWithRunner()
	if err := dnsmasq.Start(); err != nil {
		return nil, fmt.Errorf("start the guest's DHCP server: %w", err)
	}
	cfg.TapName, cfg.Forwards = pn.Tap, nil
	log.Info("pod network ready", "bridge", pn.Bridge, "tap", pn.Tap, "guest", PodNetGuestIP, "ports", pn.Ports)
	return func() { _ = dnsmasq.Process.Kill(); _ = dnsmasq.Wait() }, nil
}

// guestVM is the VM QEMU runs: the spec, with the CPU scaling mode the
// runner was told (QMP by default) in it.
func guestVM(cfg Config) (*vmv1.VirtualMachine, vmv1.CPUScalingMode) {
	mode := cfg.CPUScalingMode
	if mode == "" {
		mode = vmv1.CPUScalingModeQMP
	}
	vm := &vmv1.VirtualMachine{Spec: cfg.Spec}
	vm.Spec.CPUScalingMode = &mode
	return vm, mode
}

// qemuConfig is what QEMU's command line needs besides the VM: the
// prepared disks and networks, the runner's sockets, and, on a migration
// target, the devices its source has.
func qemuConfig(cfg Config, vm *vmv1.VirtualMachine, accel qemu.Accel, root string, disks []qemu.Disk, extraNIC *qemu.ExtraNIC, log *slog.Logger) qemu.Config {
	var extra []string
	if cfg.AppendKernelCmdline != "" {
		extra = append(extra, cfg.AppendKernelCmdline)
	}
	qcfg := qemu.Config{
		Accel: accel, QMPHost: cfg.QMPHost, QMPSigtermSocket: filepath.Join(cfg.RunDir, SigtermSocket),
		QMPEventsSocket: filepath.Join(cfg.RunDir, EventsSocket),
		ExecSocket:      filepath.Join(cfg.RunDir, ExecSocket),
		KernelPath:      cfg.Kernel, InitrdPath: cfg.Initrd, RootDiskPath: root, Disks: disks,
		MemhpAutoMovableRatio: cfg.MemhpAutoMovableRatio, UseVirtioConsole: cfg.UseVirtioConsole,
		DiskCache: cfg.DiskCache, ExtraKernelArgs: extra, Hostname: "vm-" + cfg.PodName, RunAs: cfg.QEMUUser,
		Network:  qemu.Network{TapName: cfg.TapName, Forwards: cfg.Forwards, VhostNet: cfg.TapName != "" && exists("/dev/vhost-net")},
		ExtraNIC: extraNIC,
	}
	if cfg.ReceiveMigration {
		qcfg.Incoming = "tcp:0:" + strconv.Itoa(int(vmv1.MigrationPort))
		qcfg.HotpluggedCPUs, qcfg.VirtioMemRequestedBytes = MigrationTargetDevices(vm, cfg.Status)
		if len(qcfg.HotpluggedCPUs) > 0 {
			qcfg.CPUDriver = qemu.CPUDriver(runtime.GOARCH)
		}
		log.Info("waiting for an incoming migration", "port", vmv1.MigrationPort,
			"hotpluggedCPUs", len(qcfg.HotpluggedCPUs), "virtioMemBytes", qcfg.VirtioMemRequestedBytes)
	}
	return qcfg
}

// qemuProcess is a started QEMU; exited delivers its Wait once.
type qemuProcess struct {
	cmd    *exec.Cmd
	exited chan error
}

// kill stops QEMU and waits for it.
func (q *qemuProcess) kill() {
	_ = q.cmd.Process.Kill()
	<-q.exited
}

// startQEMU builds QEMU's command line and starts it.
func startQEMU(cfg Config, vm *vmv1.VirtualMachine, qcfg qemu.Config, tail io.Writer, log *slog.Logger) (*qemuProcess, error) {
	cmd, err := qemu.Build(vm, qcfg)
	if err != nil {
		return nil, fmt.Errorf("QEMU command line: %w", err)
	}
	qpath := cmd.Path
	if cfg.QEMUPath != "" {
		qpath = cfg.QEMUPath
	}
	proc := exec.Command(qpath, cmd.Args...)
	proc.Stdout, proc.Stderr = io.MultiWriter(os.Stdout, tail), io.MultiWriter(os.Stderr, tail)
	proc.SysProcAttr = diesWithRunner()
	if err := proc.Start(); err != nil {
		return nil, fmt.Errorf("start QEMU: %w", err)
	}
	log.Info("QEMU started", "pid", proc.Process.Pid, "accel", qcfg.Accel)
	q := &qemuProcess{cmd: proc, exited: make(chan error, 1)}
	go func() { q.exited <- proc.Wait() }()
	return q, nil
}

// serveAPI serves the runner API and re-syncs watched disks into the guest
// until ctx ends; the channel returned delivers the API server's end.
func serveAPI(ctx context.Context, cfg Config, mode vmv1.CPUScalingMode, sigtermSock string, log *slog.Logger) <-chan error {
	spec := &cfg.Spec
	api := NewAPI(spec, mode, func(ctx context.Context) error { return guestRunning(ctx, sigtermSock) }, cfg.DaemonAddr)
	api.GuestReadiness = cfg.PodNetwork
	apiErr := make(chan error, 1)
	go func() { apiErr <- api.Serve(ctx, cfg.HTTPAddr) }()
	if syncer := NewDiskSyncer(spec, cfg.Dirs.Mounts, cfg.DaemonAddr, log); syncer != nil {
		interval := cfg.DiskSyncInterval
		if interval <= 0 {
			interval = DefaultDiskSyncInterval
		}
		go syncer.Run(ctx, interval)
	}
	return apiErr
}

// waitForExit waits for QEMU to exit by itself (the guest powered off), for
// the API server to fail (QEMU is killed), or for ctx to end (the guest is
// powered off: stopGuest).
func waitForExit(ctx context.Context, cfg Config, q *qemuProcess, apiErr <-chan error, sigtermSock string, log *slog.Logger) error {
	select {
	case err := <-q.exited:
		if err != nil {
			return fmt.Errorf("QEMU exited: %w", err)
		}
		log.Info("QEMU exited: the guest powered off")
		return nil
	case err := <-apiErr:
		q.kill()
		return err
	case <-ctx.Done():
	}
	return stopGuest(cfg, q, sigtermSock, log)
}

// stopGuest powers the guest off over QMP and waits for QEMU as long as
// the pod's termination grace period (30 s by default), then kills it.
func stopGuest(cfg Config, q *qemuProcess, sigtermSock string, log *slog.Logger) error {
	log.Info("stopping: powering the guest off over QMP")
	if err := powerdown(sigtermSock); err != nil {
		log.Error("powerdown failed; stopping QEMU", "error", err)
		_ = q.cmd.Process.Kill()
	}
	grace := 30 * time.Second
	if g := cfg.Spec.TerminationGracePeriodSeconds; g != nil && *g > 0 {
		grace = time.Duration(*g) * time.Second
	}
	select {
	case err := <-q.exited:
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			return fmt.Errorf("wait for QEMU: %w", err)
		}
		log.Info("QEMU exited after power-off")
		return nil
	case <-time.After(grace):
		q.kill()
		return fmt.Errorf("the guest did not power off within %s; QEMU killed", grace)
	}
}

// setupExtraNetwork bridges the pod's Multus interface to a tap for the
// guest's second NIC when the VM has an extra network and an address for it
// (status.extraNetIP, allocated by the controller before the pod); nil
// when it has none, and always outside a runner pod.
func setupExtraNetwork(ctx context.Context, cfg Config, log *slog.Logger) (*qemu.ExtraNIC, error) {
	en := cfg.Spec.ExtraNetwork
	if !cfg.PodNetwork || en == nil || !en.Enable {
		return nil, nil
	}
	nic, err := ExtraNIC(cfg.Status, cfg.PodName)
	if err != nil {
		return nil, err
	}
	if nic == nil {
		log.Warn("spec.extraNetwork is enabled but the VM has no address (status.extraNetIP): the guest runs without it")
		return nil, nil
	}
	on, err := DefaultOverlayNetwork(en.Interface).Setup(ctx)
	if err != nil {
		return nil, err
	}
	nic.TapName, nic.MTU, nic.VhostNet = on.Tap, on.MTU, exists("/dev/vhost-net")
	log.Info("extra network ready", "interface", on.PodInterface, "bridge", on.Bridge, "tap", on.Tap,
		"mtu", on.MTU, "guest", nic.IP+"/"+nic.Mask, "mac", nic.MAC)
	return nic, nil
}

// ExtraNIC is the guest's second NIC from the VM's status (its address and
// mask, the MAC derived from the address), without its tap; nil when the
// status has no address.
func ExtraNIC(st vmv1.VirtualMachineStatus, podName string) (*qemu.ExtraNIC, error) {
	if st.ExtraNetIP == "" {
		return nil, nil
	}
	ip, err := netip.ParseAddr(st.ExtraNetIP)
	if err != nil || !ip.Is4() {
		return nil, fmt.Errorf("status.extraNetIP %q is not an IPv4 address", st.ExtraNetIP)
	}
	if _, err := ipam.ParseMask(st.ExtraNetMask); err != nil {
		return nil, fmt.Errorf("status.extraNetMask: %w", err)
	}
	return &qemu.ExtraNIC{MAC: OverlayMAC(ip), IP: ip.String(), Mask: st.ExtraNetMask, Hostname: podName}, nil
}

func guestRunning(ctx context.Context, sock string) error {
	c, err := qmp.Dial(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.QueryStatus(ctx)
	if err != nil {
		return err
	}
	if st.Status == "inmigrate" {
		return ErrIncoming
	}
	if !st.Running {
		return fmt.Errorf("guest is %s", st.Status)
	}
	return nil
}

func powerdown(sock string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SystemPowerdown(ctx)
}

// diesWithRunner makes a child get SIGKILL when the runner dies, however it
// dies: a QEMU left behind would hold the guest's disks and ports. (dnsmasq
// drops privileges, which clears the signal; in a pod it dies with the
// container, and the runner stops it on every exit it sees.)
func diesWithRunner() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// MigrationTargetDevices are the devices a migration target starts with to
// match its source, from the VM's status: each vCPU hot-plugged on the
// source (QMP mode: the cores above the boot vCPUs up to status.cpus,
// rounded up; the controller plugs the lowest free cores) and the virtio-mem
// size (status.memorySize above the boot memory).
func MigrationTargetDevices(vm *vmv1.VirtualMachine, st vmv1.VirtualMachineStatus) (cores []int, virtioMem int64) {
	boot := qemu.BootCPUs(vm)
	if st.CPUs != nil {
		for core := boot; core < int(st.CPUs.RoundedUp()); core++ {
			cores = append(cores, core)
		}
	}
	g := vm.Spec.Guest
	if st.MemorySize != nil && g.MemorySlots.Max > g.MemorySlots.Min {
		base := int64(g.MemorySlots.Min) * g.MemorySlotSize.Value()
		if extra := st.MemorySize.Value() - base; extra > 0 {
			virtioMem = extra
		}
	}
	return cores, virtioMem
}
