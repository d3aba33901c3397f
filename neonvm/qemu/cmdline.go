// Package qemu builds the QEMU command line of a VirtualMachine: a pure
// function of the VM spec and the runner's settings (NeonVM's layout, with
// vmscale's kernel and TCG choices), so every flag is table-tested and the
// runner only executes what this package returns.
package qemu

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// Accel is how QEMU runs guest code.
type Accel string

const (
	// AccelKVM uses the host's KVM, where a probe proved it boots a guest.
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU in software: slow but works everywhere.
	AccelTCG Accel = "tcg"
)

// ExecPortName is the guest exec channel's virtio-serial port name (the
// same as guestexec.PortName; this package stays free of guest code).
const ExecPortName = "tech.vmscale.exec"

// DefaultTCGTranslationCacheMiB keeps QEMU's TCG code cache (1 GiB by
// default) from dominating its memory.
const DefaultTCGTranslationCacheMiB = 256

// Disk is a disk file attached to the guest besides the root disk.
type Disk struct {
	// ID names the drive in QEMU and is the disk's name in the spec.
	ID   string
	Path string
	// CDROM attaches read-only media (an ISO: configMap/secret disks, the
	// runtime disk, the SSH keys).
	CDROM    bool
	ReadOnly bool
	Discard  bool
}

// Forward is a guest TCP port reachable on a host port with user-mode
// networking.
type Forward struct {
	HostAddr  string // e.g. 127.0.0.1
	HostPort  int
	GuestPort int
}

// Network is the guest's one NIC: a tap device (in a runner pod) or QEMU's
// user-mode networking (a runner run as a local process).
type Network struct {
	// TapName attaches the NIC to this tap device; empty means user-mode.
	TapName string
	// VhostNet asks for vhost; only where /dev/vhost-net exists (QEMU
	// aborts otherwise).
	VhostNet bool
	MAC      string
	// Forwards are user-mode host port forwards.
	Forwards []Forward
}

// ExtraNIC is the guest's second NIC, on spec.extraNetwork (the guest's
// eth1): a tap bridged to the pod's Multus interface, with a static address
// given on the kernel command line.
type ExtraNIC struct {
	TapName  string
	VhostNet bool
	// MAC is fixed by the runner (from the address): the overlay is one L2
	// segment shared by every VM, and QEMU's default MAC is the same for
	// all of them.
	MAC string
	// MTU is the overlay's MTU, told to the guest's driver (virtio-net
	// host_mtu) so it never sends frames the overlay drops; 0: not told.
	MTU int
	// IP and Mask are the guest's address (status.extraNetIP and
	// extraNetMask), dotted IPv4.
	IP, Mask string
	// Hostname is the ip= argument's hostname field (the pod name, as
	// NeonVM).
	Hostname string
}

// ExtraNICDevice is the guest's name of ExtraNIC: the second virtio NIC.
const ExtraNICDevice = "eth1"

// Config is what the runner knows besides the VM spec.
type Config struct {
	Arch  string // "amd64" (default) or "arm64"
	Accel Accel
	// TCGTranslationCacheMiB is tb-size under TCG (0: DefaultTCGTranslationCacheMiB).
	TCGTranslationCacheMiB int
	// RunAs is the user QEMU drops to; empty keeps the runner's user.
	RunAs string

	// QMPHost is the address QMP listens on (0.0.0.0 in a pod).
	QMPHost string
	// QMPSigtermSocket is the unix QMP socket the runner powers off through.
	QMPSigtermSocket string
	// QMPEventsSocket is the unix QMP socket the runner reads QEMU's events
	// from (why it stops); empty: none.
	QMPEventsSocket string
	// LogSocket is the virtio-serial log channel's unix socket; empty: none.
	LogSocket string
	// ExecSocket is the unix socket of the guest exec channel
	// (neonvm/guestexec); empty: none.
	ExecSocket string

	KernelPath string
	InitrdPath string
	// Init is the guest's init program.
	Init string
	// MemhpAutoMovableRatio is the controller's default, overridden by
	// spec.guest.memhpAutoMovableRatio.
	MemhpAutoMovableRatio string
	// ExtraKernelArgs go before spec.guest.appendKernelCmdline.
	ExtraKernelArgs []string
	// UseVirtioConsole puts the guest console on hvc0 instead of ttyS1.
	UseVirtioConsole bool
	// Hostname is the guest's hostname kernel argument (vm-<pod>).
	Hostname string

	RootDiskPath string
	// DiskCache is the -drive cache setting of writable disks, e.g.
	// "cache=none".
	DiskCache string
	// Disks are the runtime ISO, SSH keys, swap and spec.disks, in order.
	Disks []Disk

	Network Network
	// ExtraNIC, when set, is the guest's second NIC (spec.extraNetwork).
	ExtraNIC *ExtraNIC

	// Incoming starts QEMU waiting for a live migration on this address
	// ("tcp:0:20187").
	Incoming string
	// HotpluggedCPUs are the core ids of vCPUs plugged on a migration
	// source; the target starts with each as its own device.
	HotpluggedCPUs []int
	// CPUDriver is the hot-pluggable CPU device type (from the source's
	// query-hotpluggable-cpus), needed with HotpluggedCPUs.
	CPUDriver string
	// VirtioMemRequestedBytes is the virtio-mem size to start with (a
	// migration target starts with the source's).
	VirtioMemRequestedBytes int64
}

// Command is a QEMU invocation.
type Command struct {
	Path string
	Args []string
}

// BootCPUs is how many vCPUs QEMU starts with: the minimum, rounded up, in
// QMP mode; all of them in Sysfs mode (the guest onlines what it may use).
func BootCPUs(vm *vmv1.VirtualMachine) int {
	cpus := vm.Spec.Guest.CPUs
	if scalingMode(vm) == vmv1.CPUScalingModeSysfs {
		return int(cpus.Max.RoundedUp())
	}
	return int(cpus.Min.RoundedUp())
}

func scalingMode(vm *vmv1.VirtualMachine) vmv1.CPUScalingMode {
	if vm.Spec.CPUScalingMode == nil {
		return vmv1.CPUScalingModeQMP
	}
	return *vm.Spec.CPUScalingMode
}

// Build returns the QEMU command for vm. It fails, naming the field, on a
// spec QEMU could not start.
func Build(vm *vmv1.VirtualMachine, cfg Config) (*Command, error) {
	if err := check(vm, cfg); err != nil {
		return nil, err
	}
	// The order of the phases is the order of the flags: QEMU numbers
	// devices in flag order, and the guest names disks and NICs by it.
	var a args
	a.add(machineArgs(cfg)...)
	a.add(qmpArgs(vm, cfg)...)
	a.add(channelArgs(cfg)...)
	a.add(diskArgs(cfg)...)
	console, consoleFlags := consoleArgs(cfg)
	a.add(consoleFlags...)
	a.add(cpuArgs(vm, cfg)...)
	a.add(memoryArgs(vm, cfg)...)
	// The default NIC first, so the guest names it eth0.
	a.add(netArgs(cfg.Network)...)
	a.add(extraNICArgs(cfg.ExtraNIC)...)
	a.add(kernelArgs(vm, cfg, console)...)
	if cfg.Incoming != "" {
		a.add("-incoming", cfg.Incoming)
	}
	return &Command{Path: Binary(cfg.Arch), Args: a}, nil
}

// machineArgs are the machine type, the user QEMU drops to, and the
// devices and defaults every VM has off.
func machineArgs(cfg Config) []string {
	var a args
	if cfg.Arch == "arm64" {
		a.add("-machine", "virt", "-bios", "/vm/firmware/QEMU_EFI.fd")
	} else {
		a.add("-machine", "q35")
	}
	if cfg.RunAs != "" {
		a.add("-runas", cfg.RunAs)
	}
	a.add("-nographic", "-no-reboot", "-nodefaults", "-only-migratable",
		"-audiodev", "none,id=noaudio", "-serial", "pty", "-msg", "timestamp=on")
	return a
}

// qmpArgs are the QMP servers: the controller's, the humans', and the
// runner's own socket.
func qmpArgs(vm *vmv1.VirtualMachine, cfg Config) []string {
	host := cfg.QMPHost
	if host == "" {
		host = "0.0.0.0"
	}
	var a args
	a.add("-qmp", fmt.Sprintf("tcp:%s:%d,server,wait=off", host, port(vm.Spec.QMP, vmv1.DefaultQMPPort)))
	a.add("-qmp", fmt.Sprintf("tcp:%s:%d,server,wait=off", host, port(vm.Spec.QMPManual, vmv1.DefaultQMPManualPort)))
	if cfg.QMPSigtermSocket != "" {
		a.add("-qmp", fmt.Sprintf("unix:%s,server,wait=off", cfg.QMPSigtermSocket))
	}
	if cfg.QMPEventsSocket != "" {
		a.add("-qmp", fmt.Sprintf("unix:%s,server,wait=off", cfg.QMPEventsSocket))
	}
	return a
}

// channelArgs are the virtio-serial channels to the guest: its log and
// the exec channel, each on a unix socket of the runner's.
func channelArgs(cfg Config) []string {
	var a args
	if cfg.LogSocket != "" || cfg.ExecSocket != "" {
		a.add("-device", "virtio-serial")
	}
	if cfg.LogSocket != "" {
		a.add("-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=log", cfg.LogSocket),
			"-device", "virtserialport,chardev=log,name=tech.neon.log.0")
	}
	if cfg.ExecSocket != "" {
		a.add("-chardev", fmt.Sprintf("socket,path=%s,server=on,wait=off,id=exec", cfg.ExecSocket),
			"-device", "virtserialport,chardev=exec,name="+ExecPortName)
	}
	return a
}

// diskArgs are the drives: root first, so it is /dev/vda, then cfg.Disks
// in order.
func diskArgs(cfg Config) []string {
	var a args
	a.add("-drive", joinOpts("id=rootdisk", "file="+cfg.RootDiskPath, "if=virtio", "media=disk", "index=0", diskCache(cfg)))
	for _, d := range cfg.Disks {
		opts := []string{"id=" + d.ID, "file=" + d.Path, "if=virtio"}
		switch {
		case d.CDROM:
			opts = append(opts, "media=cdrom", "readonly=on", "cache=none")
		default:
			opts = append(opts, "media=disk", diskCache(cfg))
			if d.ReadOnly {
				opts = append(opts, "readonly=on")
			}
			if d.Discard {
				opts = append(opts, "discard=unmap")
			}
		}
		a.add("-drive", joinOpts(opts...))
	}
	return a
}

// consoleArgs put the guest console on QEMU's stdio and return its name in
// the guest: hvc0 (virtio console, always on arm64) or ttyS1.
func consoleArgs(cfg Config) (string, []string) {
	if cfg.UseVirtioConsole || cfg.Arch == "arm64" {
		return "hvc0", []string{"-chardev", "stdio,id=virtio-console", "-device", "virtio-serial-pci,id=virtio-serial-console",
			"-device", "virtconsole,chardev=virtio-console"}
	}
	return "ttyS1", []string{"-serial", "stdio"}
}

// cpuArgs are the accelerator, the CPU model and topology, and the vCPUs a
// migration target starts with hot-plugged.
func cpuArgs(vm *vmv1.VirtualMachine, cfg Config) []string {
	var a args
	switch cfg.Accel {
	case AccelKVM:
		a.add("-enable-kvm")
	default:
		tb := cfg.TCGTranslationCacheMiB
		if tb <= 0 {
			tb = DefaultTCGTranslationCacheMiB
		}
		a.add("-accel", fmt.Sprintf("tcg,thread=multi,tb-size=%d", tb))
	}
	// Under TCG, QEMU 7.2 (Debian bookworm) corrupts its heap on the first
	// vCPU plug after an unplug (multi-threaded TCG; single-threaded TCG
	// cannot unplug at all): scale CPUs with SysfsScaling there. KVM is
	// unaffected.
	slots := int(vm.Spec.Guest.CPUs.Max.RoundedUp())
	a.add("-cpu", "max",
		"-smp", fmt.Sprintf("cpus=%d,maxcpus=%d,sockets=1,cores=%d,threads=1", BootCPUs(vm), slots, slots))
	for _, core := range cfg.HotpluggedCPUs {
		a.add("-device", fmt.Sprintf("%s,id=cpu%d,socket-id=0,core-id=%d,thread-id=0", cfg.CPUDriver, core, core))
	}
	return a
}

// memoryArgs: the minimum is boot memory, the rest one virtio-mem device.
func memoryArgs(vm *vmv1.VirtualMachine, cfg Config) []string {
	g := vm.Spec.Guest
	slot := g.MemorySlotSize.Value()
	minBytes := slot * int64(g.MemorySlots.Min)
	maxBytes := slot * int64(g.MemorySlots.Max)
	var a args
	a.add("-m", fmt.Sprintf("size=%db,slots=%d,maxmem=%db", minBytes, g.MemorySlots.Max-g.MemorySlots.Min, maxBytes))
	if g.MemorySlots.Max > g.MemorySlots.Min {
		a.add("-object", fmt.Sprintf("memory-backend-ram,id=vmem0,size=%db", maxBytes-minBytes),
			"-device", fmt.Sprintf("virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=%d", cfg.VirtioMemRequestedBytes))
	}
	return a
}

// extraNICArgs are the guest's second NIC on its tap; none without one.
func extraNICArgs(n *ExtraNIC) []string {
	if n == nil {
		return nil
	}
	netdev := []string{"tap", "id=overlay", "ifname=" + n.TapName, "script=no", "downscript=no"}
	if n.VhostNet {
		netdev = append(netdev, "vhost=on")
	}
	dev := []string{"virtio-net-pci", "netdev=overlay", "mac=" + n.MAC}
	if n.MTU > 0 {
		dev = append(dev, "host_mtu="+strconv.Itoa(n.MTU))
	}
	return []string{"-netdev", joinOpts(netdev...), "-device", joinOpts(dev...)}
}

// kernelArgs are the guest kernel, its initramfs and its command line.
func kernelArgs(vm *vmv1.VirtualMachine, cfg Config, console string) []string {
	a := args{"-kernel", cfg.KernelPath}
	if cfg.InitrdPath != "" {
		a.add("-initrd", cfg.InitrdPath)
	}
	a.add("-append", KernelCmdline(vm, cfg, console))
	return a
}

// KernelCmdline is the guest kernel's command line.
func KernelCmdline(vm *vmv1.VirtualMachine, cfg Config, console string) string {
	ratio := cfg.MemhpAutoMovableRatio
	if r := vm.Spec.Guest.MemhpAutoMovableRatio; r != nil && *r != "" {
		ratio = *r
	}
	if ratio == "" {
		ratio = "401"
	}
	init := cfg.Init
	if init == "" {
		init = "/neonvm/bin/init"
	}
	parts := []string{
		"panic=-1", "init=" + init, "loglevel=6", "root=/dev/vda", "rw",
		"memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
		"memory_hotplug.auto_movable_ratio=" + ratio,
	}
	if n := cfg.ExtraNIC; n != nil {
		// The kernel's own syntax (client:server:gateway:netmask:hostname:
		// device:autoconf); the guest's init applies it, as the guest
		// kernel brings its NICs up from modules, after the kernel would.
		parts = append(parts, fmt.Sprintf("ip=%s:::%s:%s:%s:off", n.IP, n.Mask, n.Hostname, ExtraNICDevice))
	}
	if cfg.Hostname != "" {
		parts = append(parts, "hostname="+cfg.Hostname)
	}
	parts = append(parts, cfg.ExtraKernelArgs...)
	if extra := vm.Spec.Guest.AppendKernelCmdline; extra != nil && *extra != "" {
		parts = append(parts, *extra)
	}
	if scalingMode(vm) == vmv1.CPUScalingModeSysfs {
		parts = append(parts, "maxcpus="+strconv.Itoa(int(vm.Spec.Guest.CPUs.Min.RoundedUp())))
	}
	parts = append(parts, "console="+console)
	return strings.Join(parts, " ")
}

// netArgs are the guest's default NIC: on a tap device, or on QEMU's
// user-mode networking with its port forwards.
func netArgs(n Network) []string {
	var netdev []string
	if n.TapName != "" {
		netdev = []string{"tap", "id=default", "ifname=" + n.TapName, "script=no", "downscript=no"}
		if n.VhostNet {
			netdev = append(netdev, "vhost=on")
		}
	} else {
		netdev = []string{"user", "id=default"}
		for _, f := range n.Forwards {
			netdev = append(netdev, fmt.Sprintf("hostfwd=tcp:%s:%d-:%d", f.HostAddr, f.HostPort, f.GuestPort))
		}
	}
	dev := []string{"virtio-net-pci", "netdev=default"}
	if n.MAC != "" {
		dev = append(dev, "mac="+n.MAC)
	}
	return []string{"-netdev", joinOpts(netdev...), "-device", joinOpts(dev...)}
}

// check rejects what QEMU could not start, naming the field or setting.
func check(vm *vmv1.VirtualMachine, cfg Config) error {
	g := vm.Spec.Guest
	var errs []error
	if g.CPUs.Min == 0 || g.CPUs.Min > g.CPUs.Max {
		errs = append(errs, fmt.Errorf("spec.guest.cpus: min %s must be above 0 and at most max %s", g.CPUs.Min, g.CPUs.Max))
	}
	if g.MemorySlots.Min < 1 || g.MemorySlots.Min > g.MemorySlots.Max {
		errs = append(errs, fmt.Errorf("spec.guest.memorySlots: min %d must be at least 1 and at most max %d", g.MemorySlots.Min, g.MemorySlots.Max))
	}
	if s := g.MemorySlotSize.Value(); s <= 0 || s%vmv1.MemorySlotSizeGranularity != 0 {
		errs = append(errs, fmt.Errorf("spec.guest.memorySlotSize: %s is not a positive multiple of 8Mi", g.MemorySlotSize.String()))
	}
	if cfg.Arch != "" && cfg.Arch != "amd64" && cfg.Arch != "arm64" {
		errs = append(errs, fmt.Errorf("architecture %q is neither amd64 nor arm64", cfg.Arch))
	}
	if cfg.KernelPath == "" {
		errs = append(errs, errors.New("no guest kernel path"))
	}
	if cfg.RootDiskPath == "" {
		errs = append(errs, errors.New("no root disk path"))
	}
	if n := cfg.ExtraNIC; n != nil {
		if n.TapName == "" || n.MAC == "" {
			errs = append(errs, errors.New("extra NIC without a tap device or MAC"))
		}
		if ip, err := netip.ParseAddr(n.IP); err != nil || !ip.Is4() {
			errs = append(errs, fmt.Errorf("status.extraNetIP %q is not an IPv4 address", n.IP))
		}
		if m, err := netip.ParseAddr(n.Mask); err != nil || !m.Is4() {
			errs = append(errs, fmt.Errorf("status.extraNetMask %q is not an IPv4 netmask", n.Mask))
		}
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			errs = append(errs, fmt.Errorf("extra NIC MTU %d is outside 68..65535", n.MTU))
		}
	}
	if len(cfg.HotpluggedCPUs) > 0 && cfg.CPUDriver == "" {
		errs = append(errs, errors.New("hot-plugged CPUs given without their CPU driver"))
	}
	if n := len(cfg.HotpluggedCPUs) + BootCPUs(vm); n > int(g.CPUs.Max.RoundedUp()) {
		errs = append(errs, fmt.Errorf("%d boot and hot-plugged vCPUs exceed spec.guest.cpus.max %s", n, g.CPUs.Max))
	}
	extra := g.MemorySlotSize.Value() * int64(g.MemorySlots.Max-g.MemorySlots.Min)
	if cfg.VirtioMemRequestedBytes < 0 || cfg.VirtioMemRequestedBytes > extra ||
		cfg.VirtioMemRequestedBytes%vmv1.MemorySlotSizeGranularity != 0 {
		errs = append(errs, fmt.Errorf("virtio-mem requested size %d is not a multiple of 8Mi within 0..%d", cfg.VirtioMemRequestedBytes, extra))
	}
	return errors.Join(errs...)
}

func port(p, def int32) int32 {
	if p == 0 {
		return def
	}
	return p
}

func diskCache(cfg Config) string {
	if cfg.DiskCache == "" {
		return "cache=none"
	}
	return cfg.DiskCache
}

func joinOpts(opts ...string) string { return strings.Join(opts, ",") }

type args []string

func (a *args) add(s ...string) { *a = append(*a, s...) }

// Binary is the QEMU system emulator for arch ("arm64", or anything else
// for x86_64), looked up on PATH.
func Binary(arch string) string {
	if arch == "arm64" {
		return "qemu-system-aarch64"
	}
	return "qemu-system-x86_64"
}

// CPUDriver is the hot-pluggable vCPU device type of the "-cpu max" model
// on arch (what query-hotpluggable-cpus reports).
func CPUDriver(arch string) string {
	if arch == "arm64" {
		return "max-arm-cpu"
	}
	return "max-x86_64-cpu"
}
