package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
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
	// Only the pod the VM runs in is granted more; a migration target
	// holds the VM's approval as it is.
	if (v.vm.PodName != "" && v.vm.PodName != key.Name) || (v.vm.PodName == "" && len(v.pods) != 1) {
		e.mu.Unlock()
		return nil
	}
	rec, known := e.st.Pod(key)
	if !known || rec.Node == "" || rec.Tentative {
		e.mu.Unlock()
		return nil
	}
	if _, ok := e.st.Node(rec.Node); !ok {
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
	e.log.V(3).Info("approved", "vm", vk.String(), "pod", key.String(), "node", rec.Node,
		"requested", requested.String(), "approved", approved.String())
	e.queue.Add(nodeItem(rec.Node))
	if partial && approved != rec.Reserved {
		e.queue.AddAfter(podItem(key), partialGrantRequeue)
	}
	return nil
}

// rebalanceNode gives pods waiting for more a chance at capacity that was
// freed, and starts migrations off the node if it is past its watermark.
func (e *Enforcer) rebalanceNode(ctx context.Context, name string) error {
	e.mu.Lock()
	if !e.ready {
		e.mu.Unlock()
		return nil
	}
	for _, p := range e.st.PodsOn(name) {
		if p.VM != "" && p.Requested.AnyAbove(p.Reserved) {
			e.queue.Add(podItem(p.Key))
		}
	}
	type pick struct {
		vm  vmKey
		pod state.PodKey
	}
	var picks []pick
	for _, p := range e.st.MigrationsFor(name) {
		vk := vmKey{p.Key.Namespace, p.VM}
		v := e.vms[vk]
		if v == nil || v.vm == nil || len(v.migrations) > 0 || v.creating {
			continue
		}
		v.creating = true
		e.st.SetMigrating(p.Key, true)
		picks = append(picks, pick{vk, p.Key})
	}
	e.mu.Unlock()

	var firstErr error
	for _, p := range picks {
		m := vmpod.MigrationFor(p.vm.Namespace, p.vm.Name, p.pod.Name)
		cctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
		err := e.client.CreateMigration(cctx, m)
		cancel()
		e.mu.Lock()
		v := e.entry(p.vm)
		v.creating = false
		if err == nil {
			v.migrations[m.Name] = true
		}
		e.recomputeLocked(p.pod)
		e.mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("create migration %s/%s: %w", m.Namespace, m.Name, err)
			}
			continue
		}
		e.metrics.migrationCreated(name)
		e.log.Info("node past its watermark; migrating a VM away", "node", name, "vm", p.vm.String(), "pod", p.pod.String(), "migration", m.Name)
	}
	return firstErr
}

func (e *Enforcer) deleteMigration(ctx context.Context, namespace, name string) error {
	dctx, cancel := context.WithTimeout(ctx, e.cfg.CRUDTimeout())
	defer cancel()
	if err := e.client.DeleteMigration(dctx, namespace, name); err != nil {
		return fmt.Errorf("delete finished migration %s/%s: %w", namespace, name, err)
	}
	e.metrics.migrationDeleted()
	e.log.Info("deleted finished migration", "migration", namespace+"/"+name)
	return nil
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
