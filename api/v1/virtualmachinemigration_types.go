package v1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VirtualMachineMigrationSpec asks for a running VM to move to another runner
// pod, live. The whole spec is immutable once created.
type VirtualMachineMigrationSpec struct {
	// VMName is the VirtualMachine to move, in the migration's namespace.
	// +kubebuilder:validation:MinLength=1
	VMName string `json:"vmName"`

	// NodeSelector for the target pod (not acted on yet, as in NeonVM).
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// NodeAffinity for the target pod (not acted on yet, as in NeonVM).
	// +optional
	NodeAffinity *corev1.NodeAffinity `json:"nodeAffinity,omitempty"`

	// PreventMigrationToSameHost keeps the target pod off the source's node.
	// +kubebuilder:default:=true
	// +optional
	PreventMigrationToSameHost *bool `json:"preventMigrationToSameHost,omitempty"`

	// CompletionTimeout in seconds (not acted on yet, as in NeonVM).
	// +kubebuilder:default:=3600
	// +kubebuilder:validation:Minimum=1
	// +optional
	CompletionTimeout int32 `json:"completionTimeout,omitempty"`

	// Incremental copies the disk incrementally rather than whole.
	// +kubebuilder:default:=true
	// +optional
	Incremental *bool `json:"incremental,omitempty"`

	// AllowPostCopy switches to post-copy when pre-copy does not converge.
	// +kubebuilder:default:=false
	// +optional
	AllowPostCopy bool `json:"allowPostCopy"`

	// AutoConverge throttles the guest's vCPUs until memory copying
	// converges.
	// +kubebuilder:default:=true
	// +optional
	AutoConverge *bool `json:"autoConverge,omitempty"`

	// MaxBandwidth caps the migration stream, in bytes per second.
	// +kubebuilder:default:="1Gi"
	// +optional
	MaxBandwidth *resource.Quantity `json:"maxBandwidth,omitempty"`
}

// PreventsMigrationToSameHost is spec.preventMigrationToSameHost with its
// default applied.
func (s *VirtualMachineMigrationSpec) PreventsMigrationToSameHost() bool {
	return boolOr(s.PreventMigrationToSameHost, true)
}

// IsIncremental is spec.incremental with its default applied.
func (s *VirtualMachineMigrationSpec) IsIncremental() bool { return boolOr(s.Incremental, true) }

// AutoConverges is spec.autoConverge with its default applied.
func (s *VirtualMachineMigrationSpec) AutoConverges() bool { return boolOr(s.AutoConverge, true) }

// MaxBandwidthBytes is spec.maxBandwidth in bytes per second, default 1Gi.
func (s *VirtualMachineMigrationSpec) MaxBandwidthBytes() int64 {
	if s.MaxBandwidth == nil {
		return 1 << 30
	}
	return s.MaxBandwidth.Value()
}

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// VirtualMachineMigrationStatus is what the controller observed of a
// migration.
type VirtualMachineMigrationStatus struct {
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
	// +optional
	Phase VmmPhase `json:"phase,omitempty"`
	// +optional
	SourcePodName string `json:"sourcePodName,omitempty"`
	// +optional
	TargetPodName string `json:"targetPodName,omitempty"`
	// +optional
	SourcePodIP string `json:"sourcePodIP,omitempty"`
	// +optional
	TargetPodIP string `json:"targetPodIP,omitempty"`
	// SourceNode is the node the VM left (NeonVM leaves it empty).
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// TargetNode is the node the VM moved to (NeonVM leaves it empty).
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// Info is QEMU's latest report on the migration.
	// +optional
	Info MigrationInfo `json:"info,omitempty"`
}

// VmmPhase is where a migration is.
type VmmPhase string

const (
	VmmPending   VmmPhase = "Pending"
	VmmRunning   VmmPhase = "Running"
	VmmSucceeded VmmPhase = "Succeeded"
	VmmFailed    VmmPhase = "Failed"
)

// MigrationInfo is QEMU's query-migrate report.
type MigrationInfo struct {
	// +optional
	Status string `json:"status,omitempty"`
	// +optional
	TotalTimeMs int64 `json:"totalTimeMs,omitempty"`
	// +optional
	SetupTimeMs int64 `json:"setupTimeMs,omitempty"`
	// +optional
	DowntimeMs int64 `json:"downtimeMs,omitempty"`
	// +optional
	Ram MigrationInfoRAM `json:"ram,omitempty"`
	// +optional
	Compression MigrationInfoCompression `json:"compression,omitempty"`
}

// MigrationInfoRAM counts guest memory bytes.
type MigrationInfoRAM struct {
	// +optional
	Transferred int64 `json:"transferred,omitempty"`
	// +optional
	Remaining int64 `json:"remaining,omitempty"`
	// +optional
	Total int64 `json:"total,omitempty"`
}

// MigrationInfoCompression reports compression of the migration stream.
type MigrationInfoCompression struct {
	// +optional
	CompressedSize int64 `json:"compressedSize,omitempty"`
	// +optional
	CompressionRate int64 `json:"compressionRate,omitempty"`
}

// VirtualMachineMigration moves a running VirtualMachine to a new runner pod,
// live.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:singular=neonvmm
// +kubebuilder:printcolumn:name="VM",type=string,JSONPath=`.spec.vmName`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.sourcePodName`
// +kubebuilder:printcolumn:name="SourceIP",type=string,priority=1,JSONPath=`.status.sourcePodIP`
// +kubebuilder:printcolumn:name="SourceNode",type=string,priority=1,JSONPath=`.status.sourceNode`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.targetPodName`
// +kubebuilder:printcolumn:name="TargetIP",type=string,priority=1,JSONPath=`.status.targetPodIP`
// +kubebuilder:printcolumn:name="TargetNode",type=string,priority=1,JSONPath=`.status.targetNode`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VirtualMachineMigration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineMigrationSpec   `json:"spec,omitempty"`
	Status VirtualMachineMigrationStatus `json:"status,omitempty"`
}

// VirtualMachineMigrationList is a list of VirtualMachineMigrations.
//
// +kubebuilder:object:root=true
type VirtualMachineMigrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineMigration `json:"items"`
}

func init() {
	SchemeBuilder.Register(&VirtualMachineMigration{}, &VirtualMachineMigrationList{})
}
