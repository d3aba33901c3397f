package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPPoolSpec is a range of addresses and who holds which. The shape is
// Whereabouts' (docs/neonvm.md#network-and-ippool), so tools that read Whereabouts pools
// read this one too.
type IPPoolSpec struct {
	// Range is the pool's network in CIDR notation (IPv4), e.g.
	// 10.100.0.0/16. Its network and broadcast addresses are never handed
	// out.
	// +kubebuilder:validation:MinLength=1
	Range string `json:"range"`
	// Allocations maps an address, as its decimal offset from the start of
	// Range, to its holder.
	// +optional
	Allocations map[string]IPAllocation `json:"allocations"`
}

// IPAllocation is the holder of one address.
type IPAllocation struct {
	// ID identifies the holder; vmscale's controller writes the
	// VirtualMachine's UID.
	ContainerID string `json:"id"`
	// PodRef names the holder as namespace/name; vmscale's controller
	// writes the VirtualMachine's.
	// +optional
	PodRef string `json:"podref,omitempty"`
}

// IPPool is a pool of addresses for VMs' extra network. The VM controller
// takes a VM's address from it (with optimistic concurrency on the pool's
// resourceVersion) before the VM's first runner pod and gives it back when
// the VM is deleted.
//
// +kubebuilder:object:root=true
// +kubebuilder:printcolumn:name="Range",type=string,JSONPath=`.spec.range`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPPoolSpec `json:"spec"`
}

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}

func init() {
	SchemeBuilder.Register(&IPPool{}, &IPPoolList{})
}
