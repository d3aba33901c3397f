package plugin

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// Reserve holds the pod's reservation on the chosen node until its binding
// shows up. It never refuses a placement (the scheduler decided; a node left
// over budget is counted in a metric), only a pod the watch has already
// seen bound to another node. A pod already bound to this node is a repeated
// attempt for a placement that happened, and holds nothing more.
func (p *AutoscaleEnforcer) Reserve(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	e := p.e
	if e.cfg.Ignored(pod.Namespace) {
		return nil
	}
	e.mu.Lock()
	err := e.st.Reserve(e.podForFilterLocked(pod), nodeName)
	over := false
	if n, ok := e.st.Node(nodeName); ok {
		over = n.OverBudget()
	}
	e.mu.Unlock()
	if err != nil {
		return fwk.AsStatus(err)
	}
	if over {
		e.metrics.reserveOverBudget()
		p.log.Info("reserved a pod on a node now over budget", "pod", pod.Namespace+"/"+pod.Name, "node", nodeName)
	}
	e.queue.Add(nodeItem(nodeName))
	return nil
}

// Unreserve drops a tentative reservation on nodeName; a pod the watch has
// not shown is forgotten altogether.
func (p *AutoscaleEnforcer) Unreserve(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeName string) {
	e := p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	key := state.PodKey{Namespace: pod.Namespace, Name: pod.Name}
	_, watched := e.pods[key]
	if e.st.Unreserve(key, nodeName, !watched) {
		e.queue.Add(nodeItem(nodeName))
	}
}
