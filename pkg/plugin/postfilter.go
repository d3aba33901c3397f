package plugin

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
)

// PostFilter only counts pods that fit nowhere.
func (p *AutoscaleEnforcer) PostFilter(ctx context.Context, _ fwk.CycleState, pod *corev1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	p.e.metrics.podUnschedulable()
	p.log.Log(ctx, levelDetail, "no node has room", "pod", pod.Namespace+"/"+pod.Name)
	return nil, fwk.NewStatus(fwk.Unschedulable)
}
