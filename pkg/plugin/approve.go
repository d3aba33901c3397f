package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// partialGrantRequeue is when a pod granted less than it asked for is looked
// at again, in case capacity freed up without an event the plugin saw.
const partialGrantRequeue = 5 * time.Second

// approve decides the approval for a runner pod's current request
// (the grant rule, under the lock, so concurrent requests on one node can
// never both take the same capacity) and writes it on the VM, guarded by
// tests that the request it answers is still the VM's.
func (e *Enforcer) approve(ctx context.Context, key state.PodKey) error {
	e.mu.Lock()
	if !e.ready {
		e.mu.Unlock()
		return nil
	}
	info := e.pods[key]
	if info == nil || info.VM == "" || info.Terminal {
		e.mu.Unlock()
		return nil
	}
	vk := vmKey{key.Namespace, info.VM}
	v := e.vms[vk]
	if v == nil || v.vm == nil || v.vm.Requested == nil || v.vm.ScalingUnit == nil || v.inflight != nil {
		// Nothing asked yet, or an approval is being written (its
		// completion queues the pod again).
		e.mu.Unlock()
		return nil
	}
	if !v.runsIn(key.Name) {
		e.mu.Unlock()
		return nil
	}
	rec, placed := e.st.Placed(key)
	if !placed {
		e.mu.Unlock()
		return nil
	}
	granted, _, err := e.st.Grant(key)
	if err != nil {
		e.mu.Unlock()
		return fmt.Errorf("grant for %s: %w", key, err)
	}
	requested := *v.vm.Requested
	approved := granted.Reserved
	partial := requested.AnyAbove(approved)
	if v.vm.Approved != nil && *v.vm.Approved == approved {
		v.decidedFor = &requested
		v.notify()
		e.mu.Unlock()
		e.queue.Add(nodeItem(rec.Node))
		return nil
	}
	vm := *v.vm
	v.inflight = &approved
	e.mu.Unlock()

	if err := e.writeBack(ctx, vk, vmpod.ApprovalPatch(&vm, approved), requested, true, e.patchApproval); err != nil {
		return fmt.Errorf("write approval %s on VirtualMachine %s: %w", approved, vk, err)
	}
	e.log.Log(ctx, levelDetail, "approved", "vm", vk.String(), "pod", key.String(), "node", rec.Node,
		"requested", requested.String(), "approved", approved.String())
	e.queue.Add(nodeItem(rec.Node))
	if partial && approved != rec.Reserved {
		e.queue.AddAfter(podItem(key), partialGrantRequeue)
	}
	return nil
}
