package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// Permit answers an agent; see Enforcer.Permit.
var _ permit.Backend = (*Enforcer)(nil)

// PermitWait is how long an agent's request waits for its approval.
const PermitWait = time.Second

// Permit answers an agent (docs/protocols.md#permit-protocol, the flow):
// record the request on the VM, answer a request within the last permit at
// once, and otherwise wait up to a second for the approval the workers
// decide and write. If the VM changed under the write (the plugin's view
// was behind), it reads the VM afresh and tries once more.
func (e *Enforcer) Permit(ctx context.Context, req *api.AgentRequest) (api.Resources, error) {
	out, err := e.permitOnce(ctx, req)
	if !errors.Is(err, ErrPatchConflict) {
		return out, err
	}
	if rerr := e.refreshVM(ctx, state.PodKey{Namespace: req.Pod.Namespace, Name: req.Pod.Name}); rerr != nil {
		return out, fmt.Errorf("%w (and re-reading it: %w)", err, rerr)
	}
	return e.permitOnce(ctx, req)
}

func (e *Enforcer) permitOnce(ctx context.Context, req *api.AgentRequest) (api.Resources, error) {
	key := state.PodKey{Namespace: req.Pod.Namespace, Name: req.Pod.Name}
	e.mu.Lock()
	if !e.ready {
		e.mu.Unlock()
		return api.Resources{}, permit.Errorf(http.StatusInternalServerError, "scheduler plugin is starting up; not granting yet")
	}
	info := e.pods[key]
	switch {
	case info == nil:
		e.mu.Unlock()
		return api.Resources{}, permit.Errorf(http.StatusNotFound, "pod %s not found", key)
	case info.Node == "":
		e.mu.Unlock()
		return api.Resources{}, permit.Errorf(http.StatusNotFound, "pod %s is not bound to a node", key)
	case info.VM == "":
		e.mu.Unlock()
		return api.Resources{}, permit.Errorf(http.StatusBadRequest, "pod %s is not owned by a VirtualMachine", key)
	}
	vk := vmKey{key.Namespace, info.VM}
	v := e.vms[vk]
	if v == nil || v.vm == nil {
		e.mu.Unlock()
		return api.Resources{}, permit.Errorf(http.StatusNotFound, "VirtualMachine %s of pod %s not found", vk, key)
	}
	ops := vmpod.RequestPatch(v.vm, *req.ComputeUnit, req.Resources, req.LastPermit)
	// A request within the agent's last permit is answered as asked, as
	// in Neon, but only if the VM really holds that much: a last permit
	// above the approval never raises it.
	held := v.vm.Use
	if rec, ok := e.st.Pod(key); ok {
		held = rec.Reserved
	}
	withinPermit := req.LastPermit != nil && req.Resources.FitsIn(*req.LastPermit) && req.Resources.FitsIn(held)
	if len(ops) == 0 && withinPermit {
		e.mu.Unlock()
		return req.Resources, nil
	}
	// Usually the plugin can decide at once and write the request and its
	// approval in one patch; otherwise the workers decide later.
	approved, decided := e.decideNowLocked(key, v, req)
	switch {
	case decided && len(ops) == 0 && v.vm.Approved != nil && approved == *v.vm.Approved:
		// Nothing new to record or approve (say, a repeated upscale on
		// a full node): answer without a write.
		v.inflight = nil
		v.decidedFor = &req.Resources
		e.mu.Unlock()
		return approved, nil
	case decided:
		ops = vmpod.RequestApprovalPatch(v.vm, *req.ComputeUnit, req.Resources, approved)
	case len(ops) == 0:
		e.mu.Unlock()
		return e.waitForApproval(ctx, vk, req.Resources, req.LastPermit)
	}
	node := info.Node
	e.mu.Unlock()

	if err := e.writeBack(ctx, vk, ops, req.Resources, decided, e.patchInSlot); err != nil {
		return api.Resources{}, fmt.Errorf("record request on VirtualMachine %s: %w", vk, err)
	}
	e.queue.Add(nodeItem(node))

	switch {
	case decided:
		return approved, nil
	case withinPermit:
		return req.Resources, nil
	}
	return e.waitForApproval(ctx, vk, req.Resources, req.LastPermit)
}

// runsIn reports whether pod is the one the VM runs in: the one its status
// names, or, before it names one, its only pod. Only that pod is granted
// more; a migration target holds the VM's approval as it is.
func (v *vmEntry) runsIn(pod string) bool {
	if v.vm.PodName != "" {
		return v.vm.PodName == pod
	}
	return len(v.pods) == 1
}

// decideNowLocked applies the grant rule to a request right away when the
// pod is bound to a known node, is the VM's current pod, and no approval is
// being written; the capacity is held (inflight) until the write ends.
func (e *Enforcer) decideNowLocked(key state.PodKey, v *vmEntry, req *api.AgentRequest) (api.Resources, bool) {
	if v.inflight != nil || v.vm == nil || !v.runsIn(key.Name) {
		return api.Resources{}, false
	}
	// A last permit below the approval gives the difference back first.
	var lowerTo *api.Resources
	if v.vm.Approved != nil {
		lowerTo = req.LastPermit
	}
	granted, ok := e.st.GrantRequest(key, req.Resources, *req.ComputeUnit, lowerTo)
	if !ok {
		return api.Resources{}, false
	}
	approved := granted.Reserved
	v.inflight = &approved
	return approved, true
}

func (e *Enforcer) waitForApproval(ctx context.Context, vk vmKey, req api.Resources, lastPermit *api.Resources) (api.Resources, error) {
	timer := e.clock.NewTimer(PermitWait)
	defer timer.Stop()
	for {
		e.mu.Lock()
		v := e.vms[vk]
		if v == nil {
			e.mu.Unlock()
			return api.Resources{}, permit.Errorf(http.StatusNotFound, "VirtualMachine %s vanished", vk)
		}
		if approved, ok := approvedFor(v, req, lastPermit); ok {
			e.mu.Unlock()
			return approved, nil
		}
		changed := v.changed
		e.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C():
			e.mu.Lock()
			defer e.mu.Unlock()
			if v := e.vms[vk]; v != nil && v.vm != nil && v.vm.Requested != nil && *v.vm.Requested == req && v.vm.Approved != nil {
				return *v.vm.Approved, nil
			}
			return api.Resources{}, fmt.Errorf("timed out waiting for updates to be processed")
		case <-ctx.Done():
			return api.Resources{}, fmt.Errorf("waiting for approval of %s: %w", vk, ctx.Err())
		}
	}
}

// approvedFor is the condition a waiting agent is answered on: the VM
// records the agent's request and an approval decided for it (or, after
// another writer, an approval above the agent's last permit).
func approvedFor(v *vmEntry, req api.Resources, lastPermit *api.Resources) (api.Resources, bool) {
	if v.vm == nil || v.vm.Requested == nil || *v.vm.Requested != req || v.vm.Approved == nil || v.inflight != nil {
		return api.Resources{}, false
	}
	if v.decidedFor != nil && *v.decidedFor == req {
		return *v.vm.Approved, true
	}
	if lastPermit != nil && v.vm.Approved.AnyAbove(*lastPermit) {
		return *v.vm.Approved, true
	}
	return api.Resources{}, false
}

// refreshVM reads a pod's VM from the apiserver into the plugin's view.
func (e *Enforcer) refreshVM(ctx context.Context, key state.PodKey) error {
	e.mu.Lock()
	info := e.pods[key]
	e.mu.Unlock()
	if info == nil || info.VM == "" {
		return fmt.Errorf("pod %s gone", key)
	}
	gctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
	defer cancel()
	obj, err := e.client.GetVM(gctx, key.Namespace, info.VM)
	if err != nil {
		return err
	}
	e.OnVM(obj)
	return nil
}
