package state

// MigrationsFor picks the pods to migrate off a node so that what stays
// (Reserved minus what is already migrating) falls to the watermark: the
// oldest migratable pods not yet migrating, skipping any pod that alone
// holds more than the watermark (it would be past it on any node).
func (s *State) MigrationsFor(node string) []Pod {
	n := s.nodes[node]
	if n == nil {
		return nil
	}
	excessCPU := sat(sat(n.CPU.Reserved, n.CPU.Migrating), n.CPU.Watermark)
	excessMem := sat(sat(n.Mem.Reserved, n.Mem.Migrating), n.Mem.Watermark)
	if excessCPU == 0 && excessMem == 0 {
		return nil
	}
	var picks []Pod
	for _, p := range s.PodsOn(node) {
		if excessCPU == 0 && excessMem == 0 {
			break
		}
		if !p.Migratable || p.Migrating || p.Tentative {
			continue
		}
		c := p.onNode()
		if c.cpu > n.CPU.Watermark || c.mem > n.Mem.Watermark {
			continue
		}
		picks = append(picks, p)
		excessCPU, excessMem = sat(excessCPU, c.cpu), sat(excessMem, c.mem)
	}
	return picks
}
