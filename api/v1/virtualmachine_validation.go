package v1

import (
	"fmt"
	"slices"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// MemorySlotSizeGranularity is the virtio-mem block size: a slot must be a
// whole number of blocks.
const MemorySlotSizeGranularity = 8 << 20

// MaxDiskNameLength is the longest disk name: it becomes an ext4/ISO label.
const MaxDiskNameLength = 32

// ReservedDiskNames are the names of the runner's own volumes and disks.
var ReservedDiskNames = []string{
	"virtualmachineimages",
	"rootdisk",
	"runtime",
	"swapdisk",
	"sysfscgroup",
	"ssh-privatekey",
	"ssh-publickey",
	"ssh-authorized-keys",
	"tls",
}

// ReservedPortNames are the runner container's own port names, which a guest
// port must not reuse. NeonVM reserves only "qmp"; the others collide just
// the same in the pod spec.
var ReservedPortNames = []string{"qmp", "qmp-manual", "runner"}

// ValidateVirtualMachine checks the rules a VirtualMachine must satisfy at
// any time. Each error names the field and the rule it broke.
func ValidateVirtualMachine(vm *VirtualMachine) field.ErrorList {
	var errs field.ErrorList
	guest := field.NewPath("spec", "guest")
	errs = append(errs, validateCPUs(vm.Spec.Guest.CPUs, guest.Child("cpus"))...)
	errs = append(errs, validateMemorySlots(vm.Spec.Guest.MemorySlots, guest.Child("memorySlots"))...)
	errs = append(errs, validateMemorySlotSize(vm.Spec.Guest.MemorySlotSize, guest.Child("memorySlotSize"))...)
	errs = append(errs, validatePorts(vm.Spec.Guest.Ports, guest.Child("ports"))...)
	errs = append(errs, validateDisks(vm.Spec.Disks, field.NewPath("spec", "disks"))...)
	if vm.Spec.Guest.RootDisk.Image == "" {
		errs = append(errs, field.Required(guest.Child("rootDisk", "image"), "the root disk needs an image"))
	}
	return errs
}

func validateCPUs(c CPUs, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.Min == 0 {
		errs = append(errs, field.Invalid(p.Child("min"), c.Min.String(), "must be above 0"))
	}
	if c.Min > c.Max {
		errs = append(errs, field.Invalid(p.Child("min"), c.Min.String(),
			fmt.Sprintf("is above max %s", c.Max)))
		return errs
	}
	if c.Use < c.Min {
		errs = append(errs, field.Invalid(p.Child("use"), c.Use.String(),
			fmt.Sprintf("is below min %s", c.Min)))
	}
	if c.Use > c.Max {
		errs = append(errs, field.Invalid(p.Child("use"), c.Use.String(),
			fmt.Sprintf("is above max %s", c.Max)))
	}
	return errs
}

func validateMemorySlots(s MemorySlots, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.Min > s.Max {
		errs = append(errs, field.Invalid(p.Child("min"), s.Min, fmt.Sprintf("is above max %d", s.Max)))
		return errs
	}
	if s.Use < s.Min {
		errs = append(errs, field.Invalid(p.Child("use"), s.Use, fmt.Sprintf("is below min %d", s.Min)))
	}
	if s.Use > s.Max {
		errs = append(errs, field.Invalid(p.Child("use"), s.Use, fmt.Sprintf("is above max %d", s.Max)))
	}
	return errs
}

func validateMemorySlotSize(q resource.Quantity, p *field.Path) field.ErrorList {
	bytes := q.Value()
	switch {
	case bytes <= 0:
		return field.ErrorList{field.Invalid(p, q.String(), "must be above 0")}
	case bytes%MemorySlotSizeGranularity != 0:
		return field.ErrorList{field.Invalid(p, q.String(), "must be a multiple of 8Mi")}
	}
	return nil
}

func validatePorts(ports []Port, p *field.Path) field.ErrorList {
	names := make([]string, len(ports))
	for i, port := range ports {
		names[i] = port.Name
	}
	return validateNames(names, p, ReservedPortNames, "is reserved for the runner's own ports")
}

func validateDisks(disks []Disk, p *field.Path) field.ErrorList {
	names := make([]string, len(disks))
	for i, d := range disks {
		names[i] = d.Name
	}
	errs := validateNames(names, p, ReservedDiskNames, "is reserved for the runner's own disks")
	for i, d := range disks {
		if len(d.Name) > MaxDiskNameLength {
			errs = append(errs, field.TooLong(p.Index(i).Child("name"), d.Name, MaxDiskNameLength))
		}
		if n := d.DiskSource.count(); n != 1 {
			errs = append(errs, field.Invalid(p.Index(i), d.Name,
				fmt.Sprintf("needs exactly one of emptyDisk, configMap, secret, tmpfs (has %d)", n)))
		}
	}
	return errs
}

// validateNames checks the .name of each item of a list: not reserved, and
// unique. Empty names are allowed (ports may be unnamed).
func validateNames(names []string, p *field.Path, reserved []string, reservedMsg string) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]int{}
	for i, name := range names {
		if name == "" {
			continue
		}
		np := p.Index(i).Child("name")
		if slices.Contains(reserved, name) {
			errs = append(errs, field.Invalid(np, name, reservedMsg))
		}
		if j, dup := seen[name]; dup {
			errs = append(errs, field.Duplicate(np, fmt.Sprintf("%s (also %s)", name, p.Index(j))))
		}
		seen[name] = i
	}
	return errs
}

func (s DiskSource) count() int {
	n := 0
	for _, set := range []bool{s.EmptyDisk != nil, s.ConfigMap != nil, s.Secret != nil, s.Tmpfs != nil} {
		if set {
			n++
		}
	}
	return n
}

// ValidateVirtualMachineUpdate checks a change to a VirtualMachine: the fields
// that describe the guest's hardware and boot are immutable, and the range
// rules still hold.
func ValidateVirtualMachineUpdate(old, vm *VirtualMachine) field.ErrorList {
	errs := ValidateVirtualMachine(vm)
	spec := field.NewPath("spec")
	guest := spec.Child("guest")
	immutable := []struct {
		path     *field.Path
		old, new any
	}{
		{guest.Child("cpus", "min"), old.Spec.Guest.CPUs.Min, vm.Spec.Guest.CPUs.Min},
		{guest.Child("cpus", "max"), old.Spec.Guest.CPUs.Max, vm.Spec.Guest.CPUs.Max},
		{guest.Child("memorySlots", "min"), old.Spec.Guest.MemorySlots.Min, vm.Spec.Guest.MemorySlots.Min},
		{guest.Child("memorySlots", "max"), old.Spec.Guest.MemorySlots.Max, vm.Spec.Guest.MemorySlots.Max},
		{guest.Child("memorySlotSize"), old.Spec.Guest.MemorySlotSize, vm.Spec.Guest.MemorySlotSize},
		{guest.Child("ports"), old.Spec.Guest.Ports, vm.Spec.Guest.Ports},
		{guest.Child("rootDisk"), old.Spec.Guest.RootDisk, vm.Spec.Guest.RootDisk},
		{guest.Child("command"), old.Spec.Guest.Command, vm.Spec.Guest.Command},
		{guest.Child("args"), old.Spec.Guest.Args, vm.Spec.Guest.Args},
		{guest.Child("env"), old.Spec.Guest.Env, vm.Spec.Guest.Env},
		{guest.Child("settings"), old.Spec.Guest.Settings, vm.Spec.Guest.Settings},
		{spec.Child("disks"), old.Spec.Disks, vm.Spec.Disks},
		{spec.Child("podResources"), old.Spec.PodResources, vm.Spec.PodResources},
		{spec.Child("enableAcceleration"), old.Spec.EnableAcceleration, vm.Spec.EnableAcceleration},
		{spec.Child("enableSSH"), old.Spec.EnableSSH, vm.Spec.EnableSSH},
		{spec.Child("initScript"), old.Spec.InitScript, vm.Spec.InitScript},
		{spec.Child("enableNetworkMonitoring"), old.Spec.EnableNetworkMonitoring, vm.Spec.EnableNetworkMonitoring},
	}
	for _, f := range immutable {
		if !apiequality.Semantic.DeepEqual(f.old, f.new) {
			errs = append(errs, field.Forbidden(f.path, "field is immutable"))
		}
	}
	if old.Spec.CPUScalingMode != nil &&
		(vm.Spec.CPUScalingMode == nil || *vm.Spec.CPUScalingMode != *old.Spec.CPUScalingMode) {
		errs = append(errs, field.Forbidden(spec.Child("cpuScalingMode"),
			fmt.Sprintf("may only be set when empty (is %s)", *old.Spec.CPUScalingMode)))
	}
	if old.Spec.TargetArchitecture != nil &&
		(vm.Spec.TargetArchitecture == nil || *vm.Spec.TargetArchitecture != *old.Spec.TargetArchitecture) {
		errs = append(errs, field.Forbidden(spec.Child("targetArchitecture"),
			fmt.Sprintf("may only be set when empty (is %s)", *old.Spec.TargetArchitecture)))
	}
	return errs
}

// Default is one default filled into an object: where (a JSON pointer) and
// the value written there.
// +kubebuilder:object:generate=false
type Default struct {
	Path  string
	Value any
}

// DefaultVirtualMachine fills the defaults the CRD schema cannot: the CPU
// scaling mode (a controller setting), and fields a Go client sends as zero
// values rather than leaving out. It changes vm and returns what it changed,
// so the webhook can patch exactly those fields and nothing else.
func DefaultVirtualMachine(vm *VirtualMachine, cpuScalingMode CPUScalingMode) []Default {
	var out []Default
	if vm.Spec.CPUScalingMode == nil && cpuScalingMode != "" {
		mode := cpuScalingMode
		vm.Spec.CPUScalingMode = &mode
		out = append(out, Default{"/spec/cpuScalingMode", mode})
	}
	if vm.Spec.Guest.RootDisk.ImagePullPolicy == "" {
		vm.Spec.Guest.RootDisk.ImagePullPolicy = "IfNotPresent"
		out = append(out, Default{"/spec/guest/rootDisk/imagePullPolicy", "IfNotPresent"})
	}
	if vm.Spec.Guest.MemorySlotSize.IsZero() {
		vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
		out = append(out, Default{"/spec/guest/memorySlotSize", "1Gi"})
	}
	for i := range vm.Spec.Guest.Ports {
		if vm.Spec.Guest.Ports[i].Protocol == "" {
			vm.Spec.Guest.Ports[i].Protocol = ProtocolTCP
			out = append(out, Default{fmt.Sprintf("/spec/guest/ports/%d/protocol", i), ProtocolTCP})
		}
	}
	return out
}
