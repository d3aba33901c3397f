package api

import (
	"encoding/json"
	"fmt"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// The labels and annotations the autoscaler-agent, the scheduler plugin,
// vmscale-top and the NeonVM controller exchange on VirtualMachines, their
// runner pods and migrations (docs/protocols.md#annotations-and-labels). Each key string is written once: the
// keys that belong to the NeonVM API itself stay in api/v1 (which cannot
// import this package) and are named here from there.
const (
	// EnabledLabel on a VM asks the autoscaler-agent to scale it.
	EnabledLabel = "autoscaling.neon.tech/enabled"
	// BoundsAnnotation on a VM overrides the spec's min and max.
	BoundsAnnotation = "autoscaling.neon.tech/bounds"
	// ConfigAnnotation on a VM overrides fields of the agent's default
	// ScalingConfig.
	ConfigAnnotation = "autoscaling.neon.tech/config"
	// BillingEndpointIDAnnotation on a VM names the endpoint it bills to.
	BillingEndpointIDAnnotation = "autoscaling.neon.tech/billing-endpoint-id"

	// ScalingUnitAnnotation on a VM is the compute unit the agent scales it
	// by; the plugin grants in whole units of it.
	ScalingUnitAnnotation = "autoscaling.neon.tech/scaling-unit"
	// RequestedAnnotation on a VM is the agent's last request to the plugin.
	RequestedAnnotation = "internal.autoscaling.neon.tech/resources-requested"
	// ApprovedAnnotation on a VM is the plugin's approval (the permit).
	ApprovedAnnotation = "internal.autoscaling.neon.tech/resources-approved"

	// AutoMigrationLabel on a VM or pod lets the plugin migrate it off an
	// overfull node.
	AutoMigrationLabel = "autoscaling.neon.tech/auto-migration-enabled"
	// AlwaysMigrateLabel, present with any value, makes it migratable in
	// tests.
	AlwaysMigrateLabel = "autoscaling.neon.tech/testing-only-always-migrate"
	// CreatedBySchedulerLabel marks the migrations the plugin created, so it
	// deletes only its own when they finish.
	CreatedBySchedulerLabel = "autoscaling.neon.tech/created-by-scheduler"
)

// Keys of the NeonVM API, set by the controller on runner pods and read by
// the plugin.
const (
	// VMNameLabel on a runner pod names its VirtualMachine.
	VMNameLabel = vmv1.VirtualMachineNameLabel
	// VMUsageAnnotation on a runner pod is the VM's current use.
	VMUsageAnnotation = vmv1.VirtualMachineUsageAnnotation
	// VMResourcesAnnotation on a runner pod is the VM's bounds and use.
	VMResourcesAnnotation = vmv1.VirtualMachineResourcesAnnotation
	// VMOvercommitAnnotation on a runner pod is the VM's spec.overcommit.
	VMOvercommitAnnotation = vmv1.VirtualMachineOvercommitAnnotation
)

// ResourcesAnnotation reads a Resources annotation (scaling unit, requested,
// approved) from annotations. It returns nil, "", false, nil when the key is
// absent; a value that does not parse is present but gives a nil Resources
// and an error naming the key.
func ResourcesAnnotation(annotations map[string]string, key string) (r *Resources, raw string, present bool, err error) {
	raw, present = annotations[key]
	if !present {
		return nil, "", false, nil
	}
	var out Resources
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		return nil, raw, true, fmt.Errorf("annotation %s: %w", key, err)
	}
	return &out, raw, true, nil
}
