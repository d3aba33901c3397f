package plugin

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// Filter refuses a node where the pod's reservation would not fit next to
// the pods the scheduler has there (bound or assumed).
func (p *AutoscaleEnforcer) Filter(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeInfo fwk.NodeInfo) *fwk.Status {
	if pod.Spec.SchedulerName != p.cfg.SchedulerName {
		return fwk.AsStatus(fmt.Errorf("pod %s/%s has schedulerName %q, not %q", pod.Namespace, pod.Name, pod.Spec.SchedulerName, p.cfg.SchedulerName))
	}
	node := nodeInfo.Node()
	if node == nil {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node not found")
	}
	alloc := nodeInfo.GetAllocatable()
	total := api.Resources{VCPU: vmv1.MilliCPU(max(alloc.GetMilliCPU(), 0)), Mem: api.Bytes(max(alloc.GetMemory(), 0))}
	e := p.e
	e.mu.Lock()
	held := make([]state.Pod, 0, len(nodeInfo.GetPods()))
	for _, pi := range nodeInfo.GetPods() {
		other := pi.GetPod()
		if other.Namespace == pod.Namespace && other.Name == pod.Name {
			continue
		}
		held = append(held, e.podForFilterLocked(other))
	}
	candidate := e.podForFilterLocked(pod)
	e.mu.Unlock()
	if !state.FitsIn(total, held, candidate) {
		return fwk.NewStatus(fwk.Unschedulable, "Not enough resources for Pod")
	}
	return nil
}

// podForFilter is the accounting's view of any pod the scheduler shows,
// known to the watch or not yet. Only the watch places a pod: the
// scheduler's copy names the node it assumed for the pod from the scheduling
// cycle's Reserve on, before any binding, and the plugin's watch can trail
// the scheduler's, so a pod first seen here is placed nowhere.
func (e *Enforcer) podForFilterLocked(p *corev1.Pod) state.Pod {
	key := state.PodKey{Namespace: p.Namespace, Name: p.Name}
	if rec, ok := e.st.Pod(key); ok {
		return rec
	}
	info, _ := vmpod.PodFromObject(p)
	info.Node = ""
	return e.recordLocked(info)
}
