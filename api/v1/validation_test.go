package v1

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"
)

func validVM() *VirtualMachine {
	vm := &VirtualMachine{}
	vm.Name = "vm"
	vm.Spec.Guest = Guest{
		CPUs:           CPUs{Min: 250, Max: 2000, Use: 1000},
		MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots:    MemorySlots{Min: 2, Max: 8, Use: 4},
		RootDisk:       RootDisk{Image: "vm-postgres:15"},
		Ports:          []Port{{Name: "postgres", Port: 5432}},
	}
	vm.Spec.Disks = []Disk{{Name: "pgdata", MountPath: "/data", DiskSource: DiskSource{EmptyDisk: &EmptyDiskSource{Size: resource.MustParse("1Gi")}}}}
	return vm
}

func TestValidateVirtualMachine(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*VirtualMachine)
		want   []string // substrings of the error; nil means valid
	}{
		{name: "valid", mutate: func(*VirtualMachine) {}},
		{name: "cpu use above max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Use = 5000 },
			want: []string{`spec.guest.cpus.use: Invalid value: "5": is above max 2`}},
		{name: "cpu use below min", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Use = 100 },
			want: []string{`spec.guest.cpus.use: Invalid value: "100m": is below min 250m`}},
		{name: "cpu min above max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Min = 3000 },
			want: []string{`spec.guest.cpus.min: Invalid value: "3": is above max 2`}},
		{name: "cpu min zero", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Min = 0 },
			want: []string{`spec.guest.cpus.min: Invalid value: "0": must be above 0`}},
		{name: "slots use above max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlots.Use = 9 },
			want: []string{`spec.guest.memorySlots.use: Invalid value: 9: is above max 8`}},
		{name: "slots use below min", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlots.Use = 1 },
			want: []string{`spec.guest.memorySlots.use: Invalid value: 1: is below min 2`}},
		{name: "slots min above max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlots.Min = 9 },
			want: []string{`spec.guest.memorySlots.min: Invalid value: 9: is above max 8`}},
		{name: "slot size not 8Mi multiple", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlotSize = resource.MustParse("100Mi") },
			want: []string{`spec.guest.memorySlotSize: Invalid value: "100Mi": must be a multiple of 8Mi`}},
		{name: "slot size zero", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlotSize = resource.Quantity{} },
			want: []string{`spec.guest.memorySlotSize: Invalid value: "0": must be above 0`}},
		{name: "port named qmp", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Ports[0].Name = "qmp" },
			want: []string{`spec.guest.ports[0].name: Invalid value: "qmp": is reserved`}},
		{name: "port named runner", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Ports[0].Name = "runner" },
			want: []string{`spec.guest.ports[0].name: Invalid value: "runner": is reserved`}},
		{name: "duplicate port name", mutate: func(vm *VirtualMachine) {
			vm.Spec.Guest.Ports = append(vm.Spec.Guest.Ports, Port{Name: "postgres", Port: 6432})
		}, want: []string{`spec.guest.ports[1].name: Duplicate value`}},
		{name: "reserved disk name", mutate: func(vm *VirtualMachine) { vm.Spec.Disks[0].Name = "rootdisk" },
			want: []string{`spec.disks[0].name: Invalid value: "rootdisk": is reserved`}},
		{name: "disk name too long", mutate: func(vm *VirtualMachine) { vm.Spec.Disks[0].Name = strings.Repeat("d", 33) },
			want: []string{`spec.disks[0].name: Too long: may not be more than 32`}},
		{name: "duplicate disk name", mutate: func(vm *VirtualMachine) {
			vm.Spec.Disks = append(vm.Spec.Disks, Disk{Name: "pgdata", DiskSource: DiskSource{Tmpfs: &TmpfsDiskSource{Size: resource.MustParse("1Gi")}}})
		}, want: []string{`spec.disks[1].name: Duplicate value`}},
		{name: "disk without source", mutate: func(vm *VirtualMachine) { vm.Spec.Disks[0].DiskSource = DiskSource{} },
			want: []string{`spec.disks[0]: Invalid value: "pgdata": needs exactly one of emptyDisk, configMap, secret, tmpfs (has 0)`}},
		{name: "disk with two sources", mutate: func(vm *VirtualMachine) {
			vm.Spec.Disks[0].Tmpfs = &TmpfsDiskSource{Size: resource.MustParse("1Gi")}
		}, want: []string{`(has 2)`}},
		{name: "no root disk image", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.RootDisk.Image = "" },
			want: []string{`spec.guest.rootDisk.image: Required value`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vm := validVM()
			c.mutate(vm)
			errs := ValidateVirtualMachine(vm)
			assertErrors(t, errs.ToAggregate(), c.want)
		})
	}
}

func TestValidateVirtualMachineUpdate(t *testing.T) {
	cases := []struct {
		name   string
		old    func(*VirtualMachine)
		mutate func(*VirtualMachine)
		want   []string
	}{
		{name: "use may change", mutate: func(vm *VirtualMachine) {
			vm.Spec.Guest.CPUs.Use = 2000
			vm.Spec.Guest.MemorySlots.Use = 8
			vm.Spec.TargetRevision = &RevisionWithTime{Revision: Revision{Value: 3, Flags: RevisionFlagUpscale}}
		}},
		{name: "use still range-checked", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Use = 3000 },
			want: []string{"spec.guest.cpus.use: Invalid value"}},
		{name: "cpus.min", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Min = 500 },
			want: []string{"spec.guest.cpus.min: Forbidden: field is immutable"}},
		{name: "cpus.max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.CPUs.Max = 4000; vm.Spec.Guest.CPUs.Use = 1000 },
			want: []string{"spec.guest.cpus.max: Forbidden: field is immutable"}},
		{name: "memorySlots.min", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlots.Min = 1 },
			want: []string{"spec.guest.memorySlots.min: Forbidden"}},
		{name: "memorySlots.max", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.MemorySlots.Max = 16 },
			want: []string{"spec.guest.memorySlots.max: Forbidden"}},
		{name: "ports", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Ports[0].Port = 5433 },
			want: []string{"spec.guest.ports: Forbidden"}},
		{name: "rootDisk", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.RootDisk.Image = "other" },
			want: []string{"spec.guest.rootDisk: Forbidden"}},
		{name: "command", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Command = []string{"sh"} },
			want: []string{"spec.guest.command: Forbidden"}},
		{name: "args", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Args = []string{"-c"} },
			want: []string{"spec.guest.args: Forbidden"}},
		{name: "env", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Env = []EnvVar{{Name: "A"}} },
			want: []string{"spec.guest.env: Forbidden"}},
		{name: "settings", mutate: func(vm *VirtualMachine) { vm.Spec.Guest.Settings = &GuestSettings{Sysctl: []string{"a=b"}} },
			want: []string{"spec.guest.settings: Forbidden"}},
		{name: "disks", mutate: func(vm *VirtualMachine) { vm.Spec.Disks[0].MountPath = "/other" },
			want: []string{"spec.disks: Forbidden"}},
		{name: "podResources", mutate: func(vm *VirtualMachine) {
			vm.Spec.PodResources.Requests = corev1.ResourceList{"cpu": resource.MustParse("1")}
		}, want: []string{"spec.podResources: Forbidden"}},
		{name: "enableAcceleration", mutate: func(vm *VirtualMachine) { vm.Spec.EnableAcceleration = ptr.To(false) },
			want: []string{"spec.enableAcceleration: Forbidden"}},
		{name: "enableSSH", mutate: func(vm *VirtualMachine) { vm.Spec.EnableSSH = ptr.To(false) },
			want: []string{"spec.enableSSH: Forbidden"}},
		{name: "initScript", mutate: func(vm *VirtualMachine) { vm.Spec.InitScript = "echo" },
			want: []string{"spec.initScript: Forbidden"}},
		{name: "enableNetworkMonitoring", mutate: func(vm *VirtualMachine) { vm.Spec.EnableNetworkMonitoring = ptr.To(true) },
			want: []string{"spec.enableNetworkMonitoring: Forbidden"}},
		{name: "cpuScalingMode set from empty",
			mutate: func(vm *VirtualMachine) { vm.Spec.CPUScalingMode = ptr.To(CPUScalingModeSysfs) }},
		{name: "cpuScalingMode changed",
			old:    func(vm *VirtualMachine) { vm.Spec.CPUScalingMode = ptr.To(CPUScalingModeQMP) },
			mutate: func(vm *VirtualMachine) { vm.Spec.CPUScalingMode = ptr.To(CPUScalingModeSysfs) },
			want:   []string{"spec.cpuScalingMode: Forbidden: may only be set when empty (is QmpScaling)"}},
		{name: "cpuScalingMode cleared",
			old:    func(vm *VirtualMachine) { vm.Spec.CPUScalingMode = ptr.To(CPUScalingModeQMP) },
			mutate: func(vm *VirtualMachine) { vm.Spec.CPUScalingMode = nil },
			want:   []string{"spec.cpuScalingMode: Forbidden"}},
		{name: "targetArchitecture set from empty",
			mutate: func(vm *VirtualMachine) { vm.Spec.TargetArchitecture = ptr.To(CPUArchitectureAMD64) }},
		{name: "targetArchitecture changed",
			old:    func(vm *VirtualMachine) { vm.Spec.TargetArchitecture = ptr.To(CPUArchitectureAMD64) },
			mutate: func(vm *VirtualMachine) { vm.Spec.TargetArchitecture = ptr.To(CPUArchitectureARM64) },
			want:   []string{"spec.targetArchitecture: Forbidden: may only be set when empty (is amd64)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			old := validVM()
			if c.old != nil {
				c.old(old)
			}
			vm := old.DeepCopy()
			c.mutate(vm)
			assertErrors(t, ValidateVirtualMachineUpdate(old, vm).ToAggregate(), c.want)
		})
	}
}

func TestValidateMigrationUpdateNamesChangedFields(t *testing.T) {
	old := &VirtualMachineMigration{Spec: VirtualMachineMigrationSpec{VMName: "a"}}
	m := old.DeepCopy()
	m.Spec.VMName = "b"
	m.Spec.AllowPostCopy = true
	err := ValidateVirtualMachineMigrationUpdate(old, m).ToAggregate()
	assertErrors(t, err, []string{"spec.vmName: Forbidden: field is immutable", "spec.allowPostCopy: Forbidden: field is immutable"})
	if errs := ValidateVirtualMachineMigrationUpdate(old, old.DeepCopy()); len(errs) != 0 {
		t.Fatalf("unchanged spec rejected: %v", errs)
	}
}

func TestDefaultVirtualMachine(t *testing.T) {
	vm := validVM()
	vm.Spec.Guest.MemorySlotSize = resource.Quantity{}
	DefaultVirtualMachine(vm, CPUScalingModeSysfs)
	if vm.Spec.CPUScalingMode == nil || *vm.Spec.CPUScalingMode != CPUScalingModeSysfs {
		t.Errorf("cpuScalingMode = %v; want SysfsScaling", vm.Spec.CPUScalingMode)
	}
	if vm.Spec.Guest.RootDisk.ImagePullPolicy != "IfNotPresent" {
		t.Errorf("imagePullPolicy = %q", vm.Spec.Guest.RootDisk.ImagePullPolicy)
	}
	if vm.Spec.Guest.MemorySlotSize.String() != "1Gi" {
		t.Errorf("memorySlotSize = %s", vm.Spec.Guest.MemorySlotSize.String())
	}
	if vm.Spec.Guest.Ports[0].Protocol != ProtocolTCP {
		t.Errorf("port protocol = %q", vm.Spec.Guest.Ports[0].Protocol)
	}
	// An explicit mode is kept.
	DefaultVirtualMachine(vm, CPUScalingModeQMP)
	if *vm.Spec.CPUScalingMode != CPUScalingModeSysfs {
		t.Errorf("explicit cpuScalingMode overwritten: %v", *vm.Spec.CPUScalingMode)
	}
}

func assertErrors(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("accepted; want errors %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err.Error(), w)
		}
	}
}
