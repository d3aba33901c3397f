package state

import (
	"errors"
	"fmt"
)

// ErrBoundElsewhere is Reserve's answer for a pod whose binding to another
// node the plugin has already seen: a bound pod never moves, so that
// scheduling attempt cannot succeed, and the pod keeps its place.
var ErrBoundElsewhere = errors.New("pod already bound to another node")

// Reserve holds a pod on node from the scheduler's Reserve until its
// binding shows up. p is the pod as the scheduler shows it, used only when
// the state does not know the pod yet (the plugin's watch can trail the
// scheduler's); p.Node is ignored, since the scheduler's copy already names
// the node it assumes, which is no binding.
//
// A pod already bound to node is left as it is (a repeated attempt for a
// placement that happened); one bound elsewhere is refused with
// ErrBoundElsewhere and keeps what it holds there. A tentative hold on
// another node moves to node: the scheduler has one attempt per pod in
// flight, and a new one means the old one is over.
func (s *State) Reserve(p Pod, node string) error {
	if cur := s.pods[p.Key]; cur != nil {
		if cur.Node != "" && !cur.Tentative {
			if cur.Node == node {
				return nil
			}
			return fmt.Errorf("reserve %s on %s: %w (%s)", p.Key, node, ErrBoundElsewhere, cur.Node)
		}
		p = *cur
	}
	p.Node, p.Tentative = node, true
	s.SetPod(p)
	return nil
}

// Unreserve drops a pod's tentative hold on node, and reports whether there
// was one. A pod bound there, or held on another node, is left alone. With
// forget, the pod's record goes too (the watch has not shown the pod, so
// nothing else would remove it); otherwise it stays, placed nowhere.
func (s *State) Unreserve(key PodKey, node string, forget bool) bool {
	p := s.pods[key]
	if p == nil || !p.Tentative || p.Node != node {
		return false
	}
	if forget {
		s.RemovePod(key)
		return true
	}
	s.update(key, func(p *Pod) { p.Node, p.Tentative = "", false })
	return true
}
