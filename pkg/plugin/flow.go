package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// PermitWait is how long an agent's request waits for its approval.
const PermitWait = time.Second

// Permit answers an agent (spec/protocols.md §1, the annotation flow):
// record the request on the VM, answer a request within the last permit at
// once, and otherwise wait up to a second for the approval the workers
// decide and write.
func (e *Enforcer) Permit(ctx context.Context, req *api.AgentRequest) (api.Resources, error) {
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
	e.mu.Unlock()

	if len(ops) > 0 {
		patch, _ := json.Marshal(ops)
		pctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
		start := e.clock.Now()
		obj, err := e.client.PatchVM(pctx, vk.Namespace, vk.Name, patch)
		cancel()
		e.metrics.observeRequestPatch(err, e.clock.Since(start))
		if err != nil {
			return api.Resources{}, fmt.Errorf("record request on VirtualMachine %s: %w", vk, err)
		}
		vm, verr := vmpod.VMFromObject(obj)
		if verr != nil {
			e.log.Error(verr, "patched VM has unreadable annotations", "vm", vk.String())
		}
		e.mu.Lock()
		e.setVMLocked(vm)
		e.mu.Unlock()
	}

	if req.LastPermit != nil && req.Resources.FitsIn(*req.LastPermit) {
		return req.Resources, nil
	}
	return e.waitForApproval(ctx, vk, req.Resources, req.LastPermit)
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
