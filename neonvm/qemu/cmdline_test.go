package qemu

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

func testVM() *vmv1.VirtualMachine {
	vm := &vmv1.VirtualMachine{}
	vm.Name = "db"
	vm.Spec.Guest = vmv1.Guest{
		CPUs:           vmv1.CPUs{Min: 250, Max: 2000, Use: 500},
		MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 8, Use: 2},
		RootDisk:       vmv1.RootDisk{Image: "vm-postgres"},
	}
	return vm
}

func testConfig() Config {
	return Config{
		Accel:        AccelTCG,
		KernelPath:   "/vm/kernel/vmlinux",
		InitrdPath:   "/vm/kernel/initrd",
		RootDiskPath: "/vm/images/rootdisk.qcow2",
		Hostname:     "vm-db-abcde",
	}
}

// want describes flags that must (or must not) be on the command line.
type want struct {
	pairs   [][2]string // flag, exact value
	absent  []string    // flags that must not appear
	cmdline []string    // substrings of -append
	notIn   []string    // substrings -append must not have
	path    string
	err     string
}

func TestBuild(t *testing.T) {
	cases := []struct {
		name string
		vm   func(*vmv1.VirtualMachine)
		cfg  func(*Config)
		want want
	}{
		{
			name: "QMP scaling under TCG boots with the minimum",
			want: want{
				path: "qemu-system-x86_64",
				pairs: [][2]string{
					{"-machine", "q35"},
					{"-accel", "tcg,thread=multi,tb-size=256"},
					{"-cpu", "max"},
					{"-smp", "cpus=1,maxcpus=2,sockets=1,cores=2,threads=1"},
					{"-m", "size=536870912b,slots=6,maxmem=2147483648b"},
					{"-object", "memory-backend-ram,id=vmem0,size=1610612736b"},
					{"-device", "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=0"},
					{"-qmp", "tcp:0.0.0.0:20183,server,wait=off"},
					{"-qmp", "tcp:0.0.0.0:20184,server,wait=off"},
					{"-drive", "id=rootdisk,file=/vm/images/rootdisk.qcow2,if=virtio,media=disk,index=0,cache=none"},
					{"-kernel", "/vm/kernel/vmlinux"},
					{"-initrd", "/vm/kernel/initrd"},
					{"-serial", "stdio"},
					{"-netdev", "user,id=default"},
				},
				absent:  []string{"-enable-kvm", "-incoming", "-runas"},
				cmdline: []string{"root=/dev/vda", "memhp_default_state=online", "memory_hotplug.online_policy=auto-movable", "memory_hotplug.auto_movable_ratio=401", "hostname=vm-db-abcde", "console=ttyS1"},
				notIn:   []string{"maxcpus=", "ip="},
			},
		},
		{
			name: "Sysfs scaling boots with every vCPU and limits the guest",
			vm:   func(vm *vmv1.VirtualMachine) { vm.Spec.CPUScalingMode = ptr.To(vmv1.CPUScalingModeSysfs) },
			want: want{
				pairs:   [][2]string{{"-smp", "cpus=2,maxcpus=2,sockets=1,cores=2,threads=1"}},
				cmdline: []string{"maxcpus=1"},
			},
		},
		{
			name: "KVM",
			cfg:  func(c *Config) { c.Accel = AccelKVM },
			want: want{pairs: [][2]string{{"-enable-kvm", "-cpu"}, {"-smp", "cpus=1,maxcpus=2,sockets=1,cores=2,threads=1"}}, absent: []string{"-accel"}},
		},
		{
			name: "fixed memory has no virtio-mem device",
			vm:   func(vm *vmv1.VirtualMachine) { vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 4, Max: 4, Use: 4} },
			want: want{
				pairs:  [][2]string{{"-m", "size=1073741824b,slots=0,maxmem=1073741824b"}},
				absent: []string{"-object"},
			},
		},
		{
			name: "ports, ratio, extra arguments, run-as and disks",
			vm: func(vm *vmv1.VirtualMachine) {
				vm.Spec.QMP, vm.Spec.QMPManual = 30183, 30184
				vm.Spec.Guest.MemhpAutoMovableRatio = ptr.To("301")
				vm.Spec.Guest.AppendKernelCmdline = ptr.To("quiet foo=bar")
			},
			cfg: func(c *Config) {
				c.QMPHost = "127.0.0.1"
				c.RunAs = "qemu"
				c.MemhpAutoMovableRatio = "801"
				c.ExtraKernelArgs = []string{"ip=dhcp"}
				c.QMPSigtermSocket = "/vm/qmp-sigterm.sock"
				c.LogSocket = "/vm/log.sock"
				c.ExecSocket = "/vm/exec.sock"
				c.DiskCache = "cache.writeback=on,cache.direct=on,cache.no-flush=on"
				c.Disks = []Disk{
					{ID: "runtime", Path: "/vm/images/runtime.iso", CDROM: true},
					{ID: "swapdisk", Path: "/vm/images/swapdisk.qcow2", Discard: true},
					{ID: "pgdata", Path: "/vm/images/pgdata.qcow2"},
				}
			},
			want: want{
				pairs: [][2]string{
					{"-runas", "qemu"},
					{"-qmp", "tcp:127.0.0.1:30183,server,wait=off"},
					{"-qmp", "tcp:127.0.0.1:30184,server,wait=off"},
					{"-qmp", "unix:/vm/qmp-sigterm.sock,server,wait=off"},
					{"-chardev", "socket,path=/vm/log.sock,server=on,wait=off,id=log"},
					{"-chardev", "socket,path=/vm/exec.sock,server=on,wait=off,id=exec"},
					{"-device", "virtserialport,chardev=exec,name=tech.vmscale.exec"},
					{"-drive", "id=runtime,file=/vm/images/runtime.iso,if=virtio,media=cdrom,readonly=on,cache=none"},
					{"-drive", "id=swapdisk,file=/vm/images/swapdisk.qcow2,if=virtio,media=disk,cache.writeback=on,cache.direct=on,cache.no-flush=on,discard=unmap"},
					{"-drive", "id=pgdata,file=/vm/images/pgdata.qcow2,if=virtio,media=disk,cache.writeback=on,cache.direct=on,cache.no-flush=on"},
				},
				cmdline: []string{"memory_hotplug.auto_movable_ratio=301", "ip=dhcp quiet foo=bar"},
			},
		},
		{
			name: "tap networking with vhost and a MAC",
			cfg: func(c *Config) {
				c.Network = Network{TapName: "tap-def", VhostNet: true, MAC: "52:54:00:12:34:56"}
			},
			want: want{pairs: [][2]string{
				{"-netdev", "tap,id=default,ifname=tap-def,script=no,downscript=no,vhost=on"},
				{"-device", "virtio-net-pci,netdev=default,mac=52:54:00:12:34:56"},
			}},
		},
		{
			name: "extra network: a second NIC after the default one and the guest's ip= argument",
			cfg: func(c *Config) {
				c.Network = Network{TapName: "tap-def"}
				c.ExtraNIC = &ExtraNIC{TapName: "tap-overlay", VhostNet: true, MAC: "02:00:0a:64:00:05", MTU: 1450,
					IP: "10.100.0.5", Mask: "255.255.0.0", Hostname: "db-abcde"}
			},
			want: want{
				pairs: [][2]string{
					{"-netdev", "tap,id=overlay,ifname=tap-overlay,script=no,downscript=no,vhost=on"},
					{"-device", "virtio-net-pci,netdev=overlay,mac=02:00:0a:64:00:05,host_mtu=1450"},
				},
				cmdline: []string{"auto_movable_ratio=401 ip=10.100.0.5:::255.255.0.0:db-abcde:eth1:off hostname=vm-db-abcde"},
			},
		},
		{
			name: "extra network without an MTU or vhost",
			cfg: func(c *Config) {
				c.ExtraNIC = &ExtraNIC{TapName: "tap-overlay", MAC: "02:00:0a:64:00:05", IP: "10.100.0.5", Mask: "255.255.0.0", Hostname: "db-abcde"}
			},
			want: want{pairs: [][2]string{
				{"-netdev", "tap,id=overlay,ifname=tap-overlay,script=no,downscript=no"},
				{"-device", "virtio-net-pci,netdev=overlay,mac=02:00:0a:64:00:05"},
			}},
		},
		{
			name: "extra network with a bad address",
			cfg: func(c *Config) {
				c.ExtraNIC = &ExtraNIC{TapName: "tap-overlay", MAC: "02:00:0a:64:00:05", IP: "10.100.0", Mask: "255.255.0.0"}
			},
			want: want{err: `status.extraNetIP "10.100.0" is not an IPv4 address`},
		},
		{
			name: "user networking forwards guest ports to loopback",
			cfg: func(c *Config) {
				c.Network = Network{Forwards: []Forward{{"127.0.0.1", 15432, 5432}, {"127.0.0.1", 20301, 10301}}}
			},
			want: want{pairs: [][2]string{
				{"-netdev", "user,id=default,hostfwd=tcp:127.0.0.1:15432-:5432,hostfwd=tcp:127.0.0.1:20301-:10301"},
			}},
		},
		{
			name: "migration target carries the source's hot-plugged vCPUs and memory",
			vm:   func(vm *vmv1.VirtualMachine) { vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 1000, Max: 4000, Use: 3000} },
			cfg: func(c *Config) {
				c.Incoming = "tcp:0:20187"
				c.HotpluggedCPUs = []int{1, 2}
				c.CPUDriver = "max-x86_64-cpu"
				c.VirtioMemRequestedBytes = 512 << 20
			},
			want: want{pairs: [][2]string{
				{"-incoming", "tcp:0:20187"},
				{"-smp", "cpus=1,maxcpus=4,sockets=1,cores=4,threads=1"},
				{"-device", "max-x86_64-cpu,id=cpu1,socket-id=0,core-id=1,thread-id=0"},
				{"-device", "max-x86_64-cpu,id=cpu2,socket-id=0,core-id=2,thread-id=0"},
				{"-device", "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=536870912"},
			}},
		},
		{
			name: "arm64",
			cfg:  func(c *Config) { c.Arch = "arm64" },
			want: want{
				path:    "qemu-system-aarch64",
				pairs:   [][2]string{{"-machine", "virt"}, {"-bios", "/vm/firmware/QEMU_EFI.fd"}, {"-device", "virtconsole,chardev=virtio-console"}},
				cmdline: []string{"console=hvc0"},
			},
		},
		{
			name: "slot size not a multiple of 8Mi",
			vm:   func(vm *vmv1.VirtualMachine) { vm.Spec.Guest.MemorySlotSize = resource.MustParse("100Mi") },
			want: want{err: "spec.guest.memorySlotSize: 100Mi is not a positive multiple of 8Mi"},
		},
		{
			name: "cpu bounds upside down",
			vm:   func(vm *vmv1.VirtualMachine) { vm.Spec.Guest.CPUs.Min = 3000 },
			want: want{err: "spec.guest.cpus: min 3 must be above 0 and at most max 2"},
		},
		{
			name: "too many hot-plugged vCPUs",
			cfg:  func(c *Config) { c.HotpluggedCPUs = []int{1, 2}; c.CPUDriver = "max-x86_64-cpu" },
			want: want{err: "3 boot and hot-plugged vCPUs exceed spec.guest.cpus.max 2"},
		},
		{
			name: "virtio-mem size past the maximum",
			cfg:  func(c *Config) { c.VirtioMemRequestedBytes = 4 << 30 },
			want: want{err: "virtio-mem requested size 4294967296 is not a multiple of 8Mi within 0..1610612736"},
		},
		{
			name: "no kernel",
			cfg:  func(c *Config) { c.KernelPath = "" },
			want: want{err: "no guest kernel path"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vm := testVM()
			if c.vm != nil {
				c.vm(vm)
			}
			cfg := testConfig()
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			cmd, err := Build(vm, cfg)
			if c.want.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.want.err) {
					t.Fatalf("Build error = %v; want %q", err, c.want.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.want.path != "" && cmd.Path != c.want.path {
				t.Errorf("path = %s; want %s", cmd.Path, c.want.path)
			}
			for _, p := range c.want.pairs {
				if !hasPair(cmd.Args, p[0], p[1]) {
					t.Errorf("missing %s %s in\n%s", p[0], p[1], strings.Join(cmd.Args, " "))
				}
			}
			for _, f := range c.want.absent {
				for _, a := range cmd.Args {
					if a == f {
						t.Errorf("unexpected %s", f)
					}
				}
			}
			appendArg := valueOf(cmd.Args, "-append")
			for _, s := range c.want.cmdline {
				if !strings.Contains(appendArg, s) {
					t.Errorf("kernel command line %q lacks %q", appendArg, s)
				}
			}
			for _, s := range c.want.notIn {
				if strings.Contains(appendArg, s) {
					t.Errorf("kernel command line %q has %q", appendArg, s)
				}
			}
		})
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	a, _ := Build(testVM(), testConfig())
	b, _ := Build(testVM(), testConfig())
	if strings.Join(a.Args, " ") != strings.Join(b.Args, " ") {
		t.Fatal("same input, different command lines")
	}
}

func hasPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func valueOf(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// The default NIC comes before the extra one, so the guest names them eth0
// and eth1 (virtio NICs are probed in PCI slot order, and QEMU gives slots
// in the order of the -device flags).
func TestExtraNICIsSecond(t *testing.T) {
	cfg := testConfig()
	cfg.Network = Network{TapName: "tap-def"}
	cfg.ExtraNIC = &ExtraNIC{TapName: "tap-overlay", MAC: "02:00:0a:64:00:05", IP: "10.100.0.5", Mask: "255.255.0.0"}
	cmd, err := Build(testVM(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var nics []string
	for i := 0; i+1 < len(cmd.Args); i++ {
		if cmd.Args[i] == "-device" && strings.HasPrefix(cmd.Args[i+1], "virtio-net-pci,") {
			nics = append(nics, cmd.Args[i+1])
		}
	}
	if len(nics) != 2 || !strings.Contains(nics[0], "netdev=default") || !strings.Contains(nics[1], "netdev=overlay") {
		t.Fatalf("NICs in order %q", nics)
	}
}
