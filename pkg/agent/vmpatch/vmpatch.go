// Package vmpatch writes the agent's scaling decision onto a
// VirtualMachine: one JSON patch that replaces spec.guest.cpus.use,
// spec.guest.memorySlots.use and spec.targetRevision, byte for byte as
// Neon's agent writes it (testdata/compat/vectors/vm-spec/patch-*).
package vmpatch

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

type op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Body is the patch that sets the VM to target with rev. slotSize converts
// memory to slots; target.Mem must be a whole number of them. A VM without
// spec.targetRevision yet gets it with "add" (a "replace" of a missing
// member fails); otherwise every op is a "replace".
func Body(target api.Resources, slotSize api.Bytes, rev vmv1.RevisionWithTime, hasRevision bool) ([]byte, error) {
	if slotSize == 0 || target.Mem%slotSize != 0 {
		return nil, fmt.Errorf("memory %s is not a whole number of %s slots", target.Mem, slotSize)
	}
	revOp := "replace"
	if !hasRevision {
		revOp = "add"
	}
	// MilliCPU is written as a quoted quantity here even when whole ("2").
	ops := []op{
		{Op: "replace", Path: "/spec/guest/cpus/use", Value: target.VCPU.String()},
		{Op: "replace", Path: "/spec/guest/memorySlots/use", Value: uint64(target.Mem / slotSize)},
		{Op: revOp, Path: "/spec/targetRevision", Value: rev},
	}
	b, err := json.Marshal(ops)
	if err != nil {
		return nil, fmt.Errorf("encode VM patch: %w", err)
	}
	return b, nil
}

// Patcher applies patches through the apiserver.
type Patcher struct {
	Client client.Client
}

// Apply patches the VM namespace/name with body.
func (p *Patcher) Apply(ctx context.Context, namespace, name string, body []byte) error {
	vm := &vmv1.VirtualMachine{}
	vm.Namespace, vm.Name = namespace, name
	if err := p.Client.Patch(ctx, vm, client.RawPatch(types.JSONPatchType, body)); err != nil {
		return fmt.Errorf("patch VM %s/%s: %w", namespace, name, err)
	}
	return nil
}
