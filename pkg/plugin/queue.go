package plugin

import (
	"context"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// keyKind is what a work item is about; each kind has its own worker step.
type keyKind uint8

const (
	// kindPod: decide and write the approval for a runner pod's request.
	kindPod keyKind = iota + 1
	// kindNode: give waiting pods freed capacity; migrate VMs off a node
	// past its watermark.
	kindNode
	// kindMigration: delete a finished migration the plugin created.
	kindMigration
)

// queueKey is one item of the work queue. Items are compared whole, so the
// queue runs at most one worker per pod, node or migration at a time.
type queueKey struct {
	kind     keyKind
	ns, name string
}

func podItem(k state.PodKey) queueKey { return queueKey{kind: kindPod, ns: k.Namespace, name: k.Name} }
func nodeItem(name string) queueKey   { return queueKey{kind: kindNode, name: name} }
func migrationItem(ns, name string) queueKey {
	return queueKey{kind: kindMigration, ns: ns, name: name}
}

// String is how a key shows in log lines: kind/namespace/name, or
// node/name.
func (k queueKey) String() string {
	switch k.kind {
	case kindPod:
		return "pod/" + k.ns + "/" + k.name
	case kindNode:
		return "node/" + k.name
	case kindMigration:
		return "vmm/" + k.ns + "/" + k.name
	}
	return "unknown/" + k.ns + "/" + k.name
}

// newQueue retries a failed key after retryWait, doubling up to a minute
// while it keeps failing.
func newQueue(retryWait time.Duration, clk clock.WithTicker) workqueue.TypedRateLimitingInterface[queueKey] {
	return workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[queueKey](retryWait, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[queueKey]{Name: "autoscale_enforcer", Clock: clk})
}

// Start marks startup complete (the caller has listed every Node, Pod, VM
// and migration), queues every pod and node for a first look, and runs
// the workers until ctx ends.
func (e *Enforcer) Start(ctx context.Context, workers int) {
	e.mu.Lock()
	e.ready = true
	for k, info := range e.pods {
		if info.VM != "" {
			e.queue.Add(podItem(k))
		}
	}
	e.st.Nodes(func(n *state.Node) { e.queue.Add(nodeItem(n.Name)) })
	for _, v := range e.vms {
		v.notify()
	}
	e.mu.Unlock()
	e.log.Info("startup complete; granting", "workers", workers)
	for i := 0; i < workers; i++ {
		go func() {
			for e.processNext(ctx) {
			}
		}()
	}
	go func() {
		<-ctx.Done()
		e.queue.ShutDown()
	}()
}

func (e *Enforcer) processNext(ctx context.Context) bool {
	key, quit := e.queue.Get()
	if quit {
		return false
	}
	defer e.queue.Done(key)
	var err error
	switch key.kind {
	case kindPod:
		err = e.approve(ctx, state.PodKey{Namespace: key.ns, Name: key.name})
	case kindNode:
		err = e.rebalanceNode(ctx, key.name)
	case kindMigration:
		err = e.deleteMigration(ctx, key.ns, key.name)
	}
	if err != nil {
		// Transient failures (a conflict, a slow apiserver) are routine;
		// only a run of them is worth an operator's attention.
		if n := e.queue.NumRequeues(key) + 1; n >= e.cfg.LogSuccessiveFailuresThreshold {
			e.log.Error("reconcile keeps failing; retrying with backoff", "err", err, "key", key.String(), "failures", n)
		} else {
			e.log.Log(ctx, levelRetry, "reconcile failed; retrying", "key", key.String(), "failures", n, "error", err.Error())
		}
		e.queue.AddRateLimited(key)
		return true
	}
	e.queue.Forget(key)
	return true
}
