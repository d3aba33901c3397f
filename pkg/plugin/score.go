package plugin

import (
	"context"
	"math/rand/v2"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
)

// Score prefers nodes by the state's usage curve.
func (p *AutoscaleEnforcer) Score(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeInfo fwk.NodeInfo) (int64, *fwk.Status) {
	e := p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.Score(nodeInfo.Node().Name, e.podForFilterLocked(pod)), nil
}

// ScoreExtensions has NormalizeScore.
func (p *AutoscaleEnforcer) ScoreExtensions() fwk.ScoreExtensions { return p }

// NormalizeScore spreads equal nodes: with randomize on, each non-zero
// score becomes a random one between 1 and itself.
func (p *AutoscaleEnforcer) NormalizeScore(_ context.Context, _ fwk.CycleState, _ *corev1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	if !p.cfg.Scoring.Randomize {
		return nil
	}
	for i := range scores {
		if scores[i].Score > 0 {
			scores[i].Score = 1 + rand.Int64N(scores[i].Score)
		}
	}
	return nil
}
