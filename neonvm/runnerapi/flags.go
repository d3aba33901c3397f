package runnerapi

// The runner's command-line flags the controller sets in the runner pod
// (without the leading "-"); neonvm-runner defines them under these names.
// The names are NeonVM's, appendKernelCmdline's spelling included.
const (
	// FlagVMSpec is the VM's spec, EncodeSpec'd.
	FlagVMSpec = "vmspec"
	// FlagVMStatus is the VM's status when the pod was made, EncodeSpec'd.
	FlagVMStatus = "vmstatus"
	// FlagCPUScalingMode is QmpScaling or SysfsScaling.
	FlagCPUScalingMode = "cpu-scaling-mode"
	// FlagMemhpAutoMovableRatio is the guest's
	// memory_hotplug.auto_movable_ratio.
	FlagMemhpAutoMovableRatio = "memhp-auto-movable-ratio"
	// FlagDiskCacheSettings is the -drive cache setting of writable disks.
	FlagDiskCacheSettings = "qemu-disk-cache-settings"
	// FlagAppendKernelCmdline is appended to the guest kernel's command
	// line.
	FlagAppendKernelCmdline = "appendKernelCmdline"
	// FlagUseVirtioConsole puts the guest console on hvc0.
	FlagUseVirtioConsole = "use-virtio-console"
	// FlagSkipCgroupManagement is accepted for NeonVM compatibility.
	FlagSkipCgroupManagement = "skip-cgroup-management"
	// FlagPodNetwork sets up the runner pod's guest network.
	FlagPodNetwork = "pod-network"
	// FlagQEMUUser is the user QEMU drops to.
	FlagQEMUUser = "qemu-user"
	// FlagDiskSyncInterval is how often watched disks are re-synced into
	// the guest.
	FlagDiskSyncInterval = "disk-sync-interval"
)
