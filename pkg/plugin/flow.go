package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

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
		return out, fmt.Errorf("%w (and re-reading it: %v)", err, rerr)
	}
	return e.permitOnce(ctx, req)
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
	e.mu.Unlock()

	patch, _ := json.Marshal(ops)
	obj, err := e.patchInSlot(ctx, vk, patch)
	e.mu.Lock()
	v = e.entry(vk)
	if decided {
		v.inflight = nil
	}
	if err != nil {
		for k := range v.pods {
			e.recomputeLocked(k)
		}
		v.notify()
		e.mu.Unlock()
		return api.Resources{}, fmt.Errorf("record request on VirtualMachine %s: %w", vk, err)
	}
	vm, verr := vmpod.VMFromObject(obj)
	if verr != nil {
		e.log.Error(verr, "patched VM has unreadable annotations", "vm", vk.String())
	}
	e.setVMLocked(vm)
	if decided && vm.Requested != nil && *vm.Requested == req.Resources {
		v.decidedFor = &req.Resources
		v.notify()
	}
	node := info.Node
	e.mu.Unlock()
	e.queue.Add("node/" + node)

	switch {
	case decided:
		return approved, nil
	case withinPermit:
		return req.Resources, nil
	}
	return e.waitForApproval(ctx, vk, req.Resources, req.LastPermit)
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

// decideNowLocked applies the grant rule to a request right away when the
// pod is bound to a known node, is the VM's current pod, and no approval is
// being written; the capacity is held (inflight) until the write ends.
func (e *Enforcer) decideNowLocked(key state.PodKey, v *vmEntry, req *api.AgentRequest) (api.Resources, bool) {
	if v.inflight != nil || v.vm == nil || (v.vm.PodName != "" && v.vm.PodName != key.Name) || (v.vm.PodName == "" && len(v.pods) != 1) {
		return api.Resources{}, false
	}
	rec, ok := e.st.Pod(key)
	if !ok || rec.Node == "" || rec.Tentative {
		return api.Resources{}, false
	}
	if _, ok := e.st.Node(rec.Node); !ok {
		return api.Resources{}, false
	}
	before := rec
	// A last permit below the approval gives the difference back first.
	if lp := req.LastPermit; lp != nil && v.vm.Approved != nil && lp.FitsIn(rec.Reserved) {
		rec.Reserved = *lp
	}
	rec.Requested, rec.Factor = req.Resources, *req.ComputeUnit
	e.st.SetPod(rec)
	granted, _, err := e.st.Grant(key)
	if err != nil {
		e.st.SetPod(before)
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
