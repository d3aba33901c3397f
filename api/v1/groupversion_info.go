// Package v1 holds the NeonVM API (group vm.neon.tech, version v1) as vmscale
// serves it: the VirtualMachine, VirtualMachineMigration and IPPool kinds, the
// MilliCPU encoding, and the admission webhooks that default and validate them.
//
// The JSON shape follows NeonVM exactly so existing manifests apply unchanged;
// see docs/neonvm.md and docs/api.md for where vmscale differs.
//
// +kubebuilder:object:generate=true
// +groupName=vm.neon.tech
package v1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "vm.neon.tech", Version: "v1"}

	// SchemeBuilder registers this package's kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this package's kinds to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
