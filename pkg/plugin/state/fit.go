package state

import (
	"fmt"

	"github.com/vmscale/vmscale/pkg/api"
)

// Fits reports whether a node, holding exactly the given pods plus
// candidate, stays within its Total. Filter uses it with the scheduler's
// own view of the node's pods.
func (s *State) Fits(node string, pods []Pod, candidate Pod) (bool, error) {
	n := s.nodes[node]
	if n == nil {
		return false, fmt.Errorf("node %s unknown", node)
	}
	var sum amounts
	for i := range pods {
		sum = sum.add(pods[i].onNode())
	}
	sum = sum.add(candidate.onNode())
	return sum.cpu <= n.CPU.Total && sum.mem <= n.Mem.Total, nil
}

// FitsIn reports whether pods plus candidate fit in total: Filter's test,
// against the scheduler's own view of a node.
func FitsIn(total api.Resources, pods []Pod, candidate Pod) bool {
	var sum amounts
	for i := range pods {
		sum = sum.add(pods[i].onNode())
	}
	sum = sum.add(candidate.onNode())
	return sum.cpu <= uint64(total.VCPU) && sum.mem <= uint64(total.Mem)
}

// Score ranks a node for a pod from 0 to 100: over budget is 0; otherwise
// each resource's usage fraction f (with the pod added) is mapped by a
// curve that rises from MinUsageScore at f=0 to 1 at ScorePeak and falls to
// MaxUsageScore at f=1, scaled by the node's size relative to the largest
// node, and the lower of the two resources wins.
func (s *State) Score(node string, candidate Pod) int64 {
	n := s.nodes[node]
	if n == nil || n.CPU.Total == 0 || n.Mem.Total == 0 {
		return 0
	}
	c := candidate.onNode()
	if n.pods[candidate.Key] != nil {
		c = amounts{} // already counted (Score after Reserve)
	}
	cpu := n.CPU.Reserved + c.cpu
	mem := n.Mem.Reserved + c.mem
	if cpu > n.CPU.Total || mem > n.Mem.Total {
		return 0
	}
	sc := s.cfg.Scoring
	fc := curve(sc, float64(cpu)/float64(n.CPU.Total)) * float64(n.CPU.Total) / float64(max(s.maxTotal.cpu, 1))
	fm := curve(sc, float64(mem)/float64(n.Mem.Total)) * float64(n.Mem.Total) / float64(max(s.maxTotal.mem, 1))
	return int64(100 * min(fc, fm))
}

func curve(sc ScoringConfig, f float64) float64 {
	xp := sc.ScorePeak
	switch {
	case f < xp:
		return sc.MinUsageScore + (1-sc.MinUsageScore)/xp*f
	case f > xp:
		return sc.MaxUsageScore + (1-sc.MaxUsageScore)/(1-xp)*(1-f)
	default:
		return 1
	}
}
