package plugin

import (
	"context"
	"encoding/json"
	"fmt"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// patcher writes a JSON patch on a VM: patchInSlot for an agent's request
// (bounded by the request's wait), patchApproval for a worker's decision.
type patcher func(ctx context.Context, vk vmKey, patch []byte) (*vmv1.VirtualMachine, error)

// writeBack is the one way the plugin writes a VM's autoscaling
// annotations: it applies ops through write and folds the outcome into the
// plugin's view. decided says ops carry an approval decided for requested,
// held meanwhile as the VM's inflight; it is released either way. On
// failure the VM's pods fall back to its recorded approval. On success the
// patched VM replaces the plugin's copy, and a waiting agent is woken when
// the VM now records the request the approval was decided for.
func (e *Enforcer) writeBack(ctx context.Context, vk vmKey, ops []vmpod.Op, requested api.Resources, decided bool, write patcher) error {
	patch, _ := json.Marshal(ops) // ops always encode
	obj, err := write(ctx, vk, patch)

	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.entry(vk)
	if decided {
		v.inflight = nil
	}
	if err != nil {
		for k := range v.pods {
			e.recomputeLocked(k)
		}
		v.notify()
		return err
	}
	vm, verr := vmpod.VMFromObject(obj)
	if verr != nil {
		e.log.Error("patched VM has unreadable annotations", "err", verr, "vm", vk.String())
	}
	e.setOwnVMLocked(vm)
	if decided && vm.Requested != nil && *vm.Requested == requested {
		v.decidedFor = &requested
		v.notify()
	}
	return nil
}

// patchInSlot writes a request's patch once one of the MaxRequestPatches
// write slots is free. The wait for a slot is bounded by PermitWait, as an
// agent's wait for an approval is; the write itself then gets the whole
// k8sCRUDTimeoutSeconds, so a write that starts is not cut short by the time
// spent queueing for it (which would waste it on the apiserver).
func (e *Enforcer) patchInSlot(ctx context.Context, vk vmKey, patch []byte) (*vmv1.VirtualMachine, error) {
	timer := e.clock.NewTimer(PermitWait)
	defer timer.Stop()
	select {
	case e.writeSlots <- struct{}{}:
	case <-timer.C():
		return nil, fmt.Errorf("timed out waiting %s for one of %d VM write slots", PermitWait, cap(e.writeSlots))
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of %d VM write slots: %w", cap(e.writeSlots), ctx.Err())
	}
	defer func() { <-e.writeSlots }()
	pctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
	defer cancel()
	start := e.clock.Now()
	obj, err := e.client.PatchVM(pctx, vk.Namespace, vk.Name, patch)
	e.metrics.observeRequestPatch(err, e.clock.Since(start))
	return obj, err
}

// patchApproval writes a worker's approval within k8sCRUDTimeoutSeconds.
func (e *Enforcer) patchApproval(ctx context.Context, vk vmKey, patch []byte) (*vmv1.VirtualMachine, error) {
	start := e.clock.Now()
	pctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
	defer cancel()
	obj, err := e.client.PatchVM(pctx, vk.Namespace, vk.Name, patch)
	e.metrics.observeApproval(err, e.clock.Since(start))
	return obj, err
}
