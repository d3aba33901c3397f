package v1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Ports and names fixed by the NeonVM protocols.
const (
	// DefaultQMPPort is where QEMU serves QMP to the controller.
	DefaultQMPPort int32 = 20183
	// DefaultQMPManualPort is where QEMU serves QMP to humans.
	DefaultQMPManualPort int32 = 20184
	// DefaultRunnerPort is where neonvm-runner serves its HTTP API.
	DefaultRunnerPort int32 = 25183
	// MigrationPort is where a migration target's QEMU listens.
	MigrationPort int32 = 20187

	// VirtualMachineNameLabel names the VM on its runner pods.
	VirtualMachineNameLabel = "vm.neon.tech/name"
	// VirtualMachineUsageAnnotation on the runner pod is the VM's current use.
	VirtualMachineUsageAnnotation = "vm.neon.tech/usage"
	// VirtualMachineResourcesAnnotation on the runner pod is the VM's bounds.
	VirtualMachineResourcesAnnotation = "vm.neon.tech/resources"
	// VirtualMachineOvercommitAnnotation on the runner pod is spec.overcommit.
	VirtualMachineOvercommitAnnotation = "vm.neon.tech/overcommit"
	// RunnerPodFinalizer keeps the VM until its runner pod is gone.
	VirtualMachineFinalizer = "vm.neon.tech/finalizer"
	// VirtualMachineMigrationFinalizer keeps a migration until its target
	// pod is cleaned up.
	VirtualMachineMigrationFinalizer = "vm.neon.tech/migration-finalizer"
)

// VirtualMachineSpec is the desired state of a VirtualMachine.
type VirtualMachineSpec struct {
	// QMP is the port QEMU serves QMP on for the controller.
	// +kubebuilder:default:=20183
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	QMP int32 `json:"qmp,omitempty"`

	// QMPManual is the port QEMU serves QMP on for humans.
	// +kubebuilder:default:=20184
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	QMPManual int32 `json:"qmpManual,omitempty"`

	// RunnerPort is the port neonvm-runner serves its HTTP API on.
	// +kubebuilder:default:=25183
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	RunnerPort int32 `json:"runnerPort,omitempty"`

	// TerminationGracePeriodSeconds is given to the runner pod.
	// +kubebuilder:default:=5
	// +kubebuilder:validation:Minimum=0
	// +optional
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`

	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	SchedulerName string `json:"schedulerName,omitempty"`
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// PodResources are the runner container's requests and limits.
	// +optional
	PodResources corev1.ResourceRequirements `json:"podResources,omitempty"`

	// RestartPolicy says when a VM whose guest stopped starts again.
	// +kubebuilder:default:=Always
	// +optional
	RestartPolicy RestartPolicy `json:"restartPolicy,omitempty"`

	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// Guest is what runs inside the VM.
	Guest Guest `json:"guest"`

	// TargetArchitecture pins the VM to nodes of this CPU architecture.
	// +optional
	TargetArchitecture *CPUArchitecture `json:"targetArchitecture,omitempty"`

	// ExtraInitContainers run in the runner pod before the runner.
	// +optional
	ExtraInitContainers []corev1.Container `json:"extraInitContainers,omitempty"`

	// InitScript is a shell script the runner runs before it starts QEMU.
	// +optional
	InitScript string `json:"initScript,omitempty"`

	// Disks are attached to the guest besides its root disk.
	// +optional
	Disks []Disk `json:"disks,omitempty"`

	// ExtraNetwork attaches a second network interface through Multus.
	// +optional
	ExtraNetwork *ExtraNetwork `json:"extraNetwork,omitempty"`

	// ServiceLinks enables service environment variables in the runner pod.
	// The snake_case name is NeonVM's.
	// +optional
	ServiceLinks *bool `json:"service_links,omitempty"`

	// EnableAcceleration uses KVM where the node has a working one.
	// +kubebuilder:default:=true
	// +optional
	EnableAcceleration *bool `json:"enableAcceleration,omitempty"`

	// RunnerImage overrides the controller's runner image.
	// +optional
	RunnerImage *string `json:"runnerImage,omitempty"`

	// EnableSSH gives the guest an SSH server with a generated key pair.
	// +kubebuilder:default:=true
	// +optional
	EnableSSH *bool `json:"enableSSH,omitempty"`

	// TLS provisions a certificate for the guest through cert-manager.
	// +optional
	TLS *TLSProvisioning `json:"tls,omitempty"`

	// Overcommit is recorded on the runner pod for schedulers that account
	// for it.
	// +optional
	Overcommit *OvercommitSettings `json:"overcommit,omitempty"`

	// TargetRevision is set by whoever changes the VM's resources; the
	// controller copies it to status.currentRevision once they are applied.
	// +optional
	TargetRevision *RevisionWithTime `json:"targetRevision,omitempty"`

	// CPUScalingMode is how vCPUs are scaled: by QMP hotplug or by onlining
	// CPUs through sysfs in the guest. Filled in by the webhook when empty.
	// +optional
	CPUScalingMode *CPUScalingMode `json:"cpuScalingMode,omitempty"`

	// EnableNetworkMonitoring makes the runner export network metrics.
	// +kubebuilder:default:=false
	// +optional
	EnableNetworkMonitoring *bool `json:"enableNetworkMonitoring,omitempty"`
}

// RestartPolicy says when a stopped VM starts again.
// +kubebuilder:validation:Enum=Always;OnFailure;Never
type RestartPolicy string

const (
	RestartPolicyAlways    RestartPolicy = "Always"
	RestartPolicyOnFailure RestartPolicy = "OnFailure"
	RestartPolicyNever     RestartPolicy = "Never"
)

// CPUArchitecture is a node CPU architecture (kubernetes.io/arch).
// +kubebuilder:validation:Enum=amd64;arm64
type CPUArchitecture string

const (
	CPUArchitectureAMD64 CPUArchitecture = "amd64"
	CPUArchitectureARM64 CPUArchitecture = "arm64"
)

// CPUScalingMode is how the VM's vCPUs are scaled.
// +kubebuilder:validation:Enum=QmpScaling;SysfsScaling
type CPUScalingMode string

const (
	// CPUScalingModeQMP hot-plugs and unplugs vCPUs through QMP.
	CPUScalingModeQMP CPUScalingMode = "QmpScaling"
	// CPUScalingModeSysfs boots with every vCPU and onlines them in the guest.
	CPUScalingModeSysfs CPUScalingMode = "SysfsScaling"
)

// Guest describes the VM's hardware and what it runs.
type Guest struct {
	// KernelImage is an image holding /vmlinuz to boot instead of the
	// runner's kernel.
	// +optional
	KernelImage *string `json:"kernelImage,omitempty"`

	// AppendKernelCmdline is added to the guest kernel's command line.
	// +optional
	AppendKernelCmdline *string `json:"appendKernelCmdline,omitempty"`

	// CPUs are the vCPU bounds and the amount in use.
	CPUs CPUs `json:"cpus"`

	// MemorySlotSize is the unit of guest memory; a multiple of 8Mi.
	// +kubebuilder:default:="1Gi"
	// +optional
	MemorySlotSize resource.Quantity `json:"memorySlotSize"`

	// MemorySlots are the memory bounds and the amount in use, in slots.
	MemorySlots MemorySlots `json:"memorySlots"`

	// RootDisk is the disk the guest boots from.
	RootDisk RootDisk `json:"rootDisk"`

	// Command replaces the image's entrypoint in the guest.
	// +optional
	Command []string `json:"command,omitempty"`
	// Args are passed to the guest's command.
	// +optional
	Args []string `json:"args,omitempty"`
	// Env is the guest command's environment.
	// +optional
	Env []EnvVar `json:"env,omitempty"`
	// Ports of the guest exposed on the runner pod.
	// +optional
	Ports []Port `json:"ports,omitempty"`

	// Settings are guest kernel settings.
	// +optional
	Settings *GuestSettings `json:"settings,omitempty"`

	// MemhpAutoMovableRatio overrides the controller's
	// memory_hotplug.auto_movable_ratio for this VM.
	// +kubebuilder:validation:Pattern=`^[0-9]+$`
	// +optional
	MemhpAutoMovableRatio *string `json:"memhpAutoMovableRatio,omitempty"`
}

// CPUs are vCPU bounds and the amount in use, in MilliCPU.
type CPUs struct {
	// Min is the fewest vCPUs the VM scales down to ("250m", 1).
	// +kubebuilder:validation:Required
	Min MilliCPU `json:"min"`
	// Max is the most vCPUs the VM scales up to.
	// +kubebuilder:validation:Required
	Max MilliCPU `json:"max"`
	// Use is the vCPUs the VM should have now; min <= use <= max.
	// +kubebuilder:validation:Required
	Use MilliCPU `json:"use"`
}

// MemorySlots are memory bounds and the amount in use, in slots of
// memorySlotSize.
type MemorySlots struct {
	// Min is the fewest slots the VM scales down to; it boots with these.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=512
	Min int32 `json:"min"`
	// Max is the most slots the VM scales up to.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=512
	Max int32 `json:"max"`
	// Use is the slots the VM should have now; min <= use <= max.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=512
	Use int32 `json:"use"`
}

// RootDisk is the disk image the guest boots from.
type RootDisk struct {
	// Image is the container image holding /disk.qcow2.
	Image string `json:"image"`
	// Size grows the root disk to this size when it is larger than the image.
	// +optional
	Size resource.Quantity `json:"size,omitempty"`
	// +kubebuilder:default:=IfNotPresent
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy"`
	// Execute lists files in the image the runner may execute.
	// +optional
	Execute []string `json:"execute,omitempty"`
}

// EnvVar is an environment variable of the guest command.
type EnvVar struct {
	Name string `json:"name"`
	// +optional
	Value string `json:"value,omitempty"`
}

// Port is a guest port exposed on the runner pod.
type Port struct {
	// Name is the port's name on the runner container; "qmp" is reserved.
	// +optional
	Name string `json:"name,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int `json:"port"`
	// +kubebuilder:default:=TCP
	// +kubebuilder:validation:Enum=TCP;UDP
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`
}

// Protocol is a network protocol of a guest port.
type Protocol string

const (
	ProtocolTCP Protocol = "TCP"
	ProtocolUDP Protocol = "UDP"
)

// GuestSettings are guest kernel settings.
type GuestSettings struct {
	// Sysctl lines ("key=value") applied at boot.
	// +optional
	Sysctl []string `json:"sysctl,omitempty"`
	// Swap is the size of a swap disk given to the guest.
	// +optional
	Swap *resource.Quantity `json:"swap,omitempty"`
}

// Disk is a disk attached to the guest and mounted at MountPath.
type Disk struct {
	// Name is the disk's label in the guest; at most 32 characters and not
	// one of the runner's own disk names.
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// +optional
	ReadOnly *bool `json:"readOnly,omitempty"`
	// MountPath is where the guest mounts the disk.
	// +optional
	MountPath string `json:"mountPath,omitempty"`
	// Watch keeps a configMap or secret disk in sync while the guest runs.
	// +optional
	Watch *bool `json:"watch,omitempty"`

	DiskSource `json:",inline"`
}

// DiskSource is where a disk's contents come from; exactly one is set.
type DiskSource struct {
	// +optional
	EmptyDisk *EmptyDiskSource `json:"emptyDisk,omitempty"`
	// +optional
	ConfigMap *corev1.ConfigMapVolumeSource `json:"configMap,omitempty"`
	// +optional
	Secret *corev1.SecretVolumeSource `json:"secret,omitempty"`
	// +optional
	Tmpfs *TmpfsDiskSource `json:"tmpfs,omitempty"`
}

// EmptyDiskSource is a new, empty ext4 disk.
type EmptyDiskSource struct {
	Size resource.Quantity `json:"size"`
	// Discard passes discards through to the host file.
	// +optional
	Discard bool `json:"discard,omitempty"`
	// EnableQuotas formats the disk with project quotas.
	// +optional
	EnableQuotas bool `json:"enableQuotas,omitempty"`
}

// TmpfsDiskSource is a tmpfs in the guest.
type TmpfsDiskSource struct {
	Size resource.Quantity `json:"size"`
}

// ExtraNetwork is a second interface attached through Multus.
type ExtraNetwork struct {
	// +kubebuilder:default:=false
	// +optional
	Enable bool `json:"enable"`
	// Interface is the pod interface Multus creates.
	// +kubebuilder:default:=net1
	// +optional
	Interface string `json:"interface,omitempty"`
	// MultusNetwork is the NetworkAttachmentDefinition, as namespace/name.
	// +optional
	MultusNetwork string `json:"multusNetwork,omitempty"`
}

// TLSProvisioning asks cert-manager for a certificate for the guest.
type TLSProvisioning struct {
	// CertificateIssuer is a cert-manager ClusterIssuer.
	CertificateIssuer string `json:"certificateIssuer"`
	// +optional
	ExpireAfter metav1.Duration `json:"expireAfter,omitempty"`
	// +optional
	RenewBefore metav1.Duration `json:"renewBefore,omitempty"`
	// +optional
	ServerName string `json:"serverName,omitempty"`
	// MountPath is where the certificate appears in the guest.
	// +kubebuilder:default:=/var/tls
	// +optional
	MountPath string `json:"mountPath,omitempty"`
}

// OvercommitSettings are the ratios a scheduler may overcommit the VM by.
type OvercommitSettings struct {
	// +optional
	CPU *resource.Quantity `json:"cpu,omitempty"`
	// +optional
	Memory *resource.Quantity `json:"memory,omitempty"`
}

// Revision orders changes to a VM's resources.
type Revision struct {
	Value int64 `json:"value"`
	// Flags say what kind of change it was (RevisionFlagUpscale, ...).
	Flags RevisionFlags `json:"flags"`
}

// RevisionFlags is a set of bits describing a change.
type RevisionFlags uint64

const (
	RevisionFlagUpscale   RevisionFlags = 1 << 0
	RevisionFlagDownscale RevisionFlags = 1 << 1
)

// RevisionWithTime is a Revision and when it was set.
type RevisionWithTime struct {
	Revision  Revision    `json:"revision"`
	UpdatedAt metav1.Time `json:"updatedAt"`
}

// VirtualMachineStatus is what the controller observed of a VirtualMachine.
type VirtualMachineStatus struct {
	// Conditions of types Available and Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
	// +optional
	Phase VmPhase `json:"phase,omitempty"`
	// RestartCount is how many times the VM was started again.
	// +optional
	RestartCount int32 `json:"restartCount"`
	// +optional
	PodName string `json:"podName,omitempty"`
	// +optional
	PodIP string `json:"podIP,omitempty"`
	// +optional
	ExtraNetIP string `json:"extraNetIP,omitempty"`
	// +optional
	ExtraNetMask string `json:"extraNetMask,omitempty"`
	// Node is where the runner pod runs.
	// +optional
	Node string `json:"node,omitempty"`
	// CPUs the guest has now.
	// +optional
	CPUs *MilliCPU `json:"cpus,omitempty"`
	// MemorySize the guest has now.
	// +optional
	MemorySize *resource.Quantity `json:"memorySize,omitempty"`
	// +optional
	SSHSecretName string `json:"sshSecretName,omitempty"`
	// +optional
	TLSSecretName string `json:"tlsSecretName,omitempty"`
	// CurrentRevision is the targetRevision the VM's resources match.
	// +optional
	CurrentRevision *RevisionWithTime `json:"currentRevision,omitempty"`
}

// VmPhase is where a VM is in its life.
type VmPhase string

const (
	VmPending      VmPhase = "Pending"
	VmRunning      VmPhase = "Running"
	VmScaling      VmPhase = "Scaling"
	VmPreMigrating VmPhase = "PreMigrating"
	VmMigrating    VmPhase = "Migrating"
	VmSucceeded    VmPhase = "Succeeded"
	VmFailed       VmPhase = "Failed"
)

// Condition types and reasons of a VirtualMachine.
const (
	ConditionAvailable = "Available"
	ConditionDegraded  = "Degraded"
	ReasonReconciling  = "Reconciling"
)

// VirtualMachine is a QEMU virtual machine run in a runner pod, whose vCPUs
// and memory can change while it runs.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:singular=neonvm
// +kubebuilder:printcolumn:name="Cpus",type=string,JSONPath=`.status.cpus`
// +kubebuilder:printcolumn:name="Memory",type=string,JSONPath=`.status.memorySize`
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.status.podName`
// +kubebuilder:printcolumn:name="ExtraIP",type=string,JSONPath=`.status.extraNetIP`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Restarts",type=integer,JSONPath=`.status.restartCount`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Node",type=string,priority=1,JSONPath=`.status.node`
// +kubebuilder:printcolumn:name="Image",type=string,priority=1,JSONPath=`.spec.guest.rootDisk.image`
// +kubebuilder:printcolumn:name="CPUScalingMode",type=string,priority=1,JSONPath=`.spec.cpuScalingMode`
// +kubebuilder:printcolumn:name="TargetArchitecture",type=string,priority=1,JSONPath=`.spec.targetArchitecture`
type VirtualMachine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSpec   `json:"spec,omitempty"`
	Status VirtualMachineStatus `json:"status,omitempty"`
}

// VirtualMachineList is a list of VirtualMachines.
//
// +kubebuilder:object:root=true
type VirtualMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachine `json:"items"`
}

func init() {
	SchemeBuilder.Register(&VirtualMachine{}, &VirtualMachineList{})
}
