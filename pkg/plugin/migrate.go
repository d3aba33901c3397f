package plugin

import (
	"context"
	"fmt"

	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

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
