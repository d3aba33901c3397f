package state

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

func vmv(m uint32) vmv1.MilliCPU { return vmv1.MilliCPU(m) }

// cluster is what survives a restart: per pod, its node and the annotations
// (requested, approved) and spec the plugin rebuilds its state from.
type cluster map[PodKey]Pod

func rebuild(cfg Config, nodes map[string]api.Resources, c cluster) *State {
	s := New(cfg)
	for name, total := range nodes {
		s.SetNode(name, total)
	}
	for _, p := range c {
		s.SetPod(p)
	}
	return s
}

// The invariant: through any sequence of placements (Filter's test, then
// Reserve), agent requests, grants, downscales, pod deletions and plugin
// restarts, no node's Reserved exceeds its Total, the node sums match their
// pods, and every grant is whole compute units or exactly the request.
func TestPropertyNeverOvercommits(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for seed := int64(0); seed < int64(seeds); seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runSequence(t, seed, 400) })
	}
}

func runSequence(t *testing.T, seed int64, steps int) {
	rng := rand.New(rand.NewSource(seed))
	cfg := Config{Watermark: 0.5 + rng.Float64()/2, Scoring: ScoringConfig{MinUsageScore: 0.5, ScorePeak: 0.8}}
	nodes := map[string]api.Resources{}
	for i := 0; i < 1+rng.Intn(4); i++ {
		nodes[fmt.Sprintf("node-%d", i)] = res(uint32(1000+rng.Intn(8)*500), api.Bytes(1+rng.Intn(16))*gi)
	}
	nodeNames := make([]string, 0, len(nodes))
	for n := range nodes {
		nodeNames = append(nodeNames, n)
	}
	units := []api.Resources{{VCPU: 250, Mem: gi}, {VCPU: 100, Mem: 256 << 20}, {VCPU: 1000, Mem: 4 * gi}}
	ocs := []Overcommit{{}, {CPU: 2000, Mem: 1000}, {CPU: 1500, Mem: 1250}, {CPU: 3000, Mem: 3000}}
	s := rebuild(cfg, nodes, nil)
	live := cluster{}
	next := 0
	for step := 0; step < steps; step++ {
		var desc string
		switch op := rng.Intn(10); {
		case op < 3: // schedule a new pod: Filter, then Reserve
			unit := units[rng.Intn(len(units))]
			k := uint64(1 + rng.Intn(6))
			size := api.Resources{VCPU: unit.VCPU * vmv1.MilliCPU(k), Mem: unit.Mem * api.Bytes(k)}
			p := Pod{Key: PodKey{"ns", fmt.Sprintf("p%d", next)}, VM: "vm", Factor: unit,
				Reserved: size, Requested: size, Overcommit: ocs[rng.Intn(len(ocs))],
				CreatedAt: t0.Add(time.Duration(next) * time.Second), Migratable: rng.Intn(2) == 0}
			if rng.Intn(5) == 0 { // a non-VM pod: fixed requests, no unit
				p.VM, p.Factor, p.Overcommit = "", api.Resources{}, Overcommit{}
			}
			next++
			node := nodeNames[rng.Intn(len(nodeNames))]
			if ok, _ := s.Fits(node, s.PodsOn(node), p); !ok {
				desc = "filter refused " + p.Key.Name
				break
			}
			p.Node = node
			s.SetPod(p)
			live[p.Key] = p
			desc = "placed " + p.Key.Name + " on " + node
		case op < 7: // an agent asks for a new size; the plugin grants
			k, ok := anyKey(rng, live)
			if !ok {
				continue
			}
			p := live[k]
			if p.VM == "" {
				continue
			}
			m := uint64(rng.Intn(12))
			p.Requested = api.Resources{VCPU: p.Factor.VCPU * vmv1.MilliCPU(m), Mem: p.Factor.Mem * api.Bytes(m)}
			if rng.Intn(4) == 0 { // an unaligned request
				p.Requested.VCPU += vmv1.MilliCPU(rng.Intn(int(p.Factor.VCPU)))
			}
			s.SetPod(withReserved(p, live[k].Reserved))
			before := p.Reserved
			got, _, err := s.Grant(k)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			checkGrant(t, step, before, got)
			live[k] = got
			desc = fmt.Sprintf("grant %s: %v → %v (asked %v)", k.Name, before, got.Reserved, got.Requested)
		case op < 8: // a pod goes away
			k, ok := anyKey(rng, live)
			if !ok {
				continue
			}
			s.RemovePod(k)
			delete(live, k)
			desc = "deleted " + k.Name
		case op < 9: // migrations are requested past the watermark
			for _, n := range nodeNames {
				for _, p := range s.MigrationsFor(n) {
					s.SetMigrating(p.Key, true)
					q := live[p.Key]
					q.Migrating = true
					live[p.Key] = q
				}
			}
			desc = "migrations"
		default: // the plugin restarts and rebuilds from the cluster
			s = rebuild(cfg, nodes, live)
			desc = "restart"
		}
		for name, n := range s.nodes {
			if n.OverBudget() {
				t.Fatalf("step %d (%s): node %s over budget: cpu %d/%d mem %d/%d", step, desc, name,
					n.CPU.Reserved, n.CPU.Total, n.Mem.Reserved, n.Mem.Total)
			}
		}
		checkSums(t, s)
	}
}

func withReserved(p Pod, r api.Resources) Pod { p.Reserved = r; return p }

// checkGrant: a grant moves each resource to the request exactly or by whole
// compute units, and never past the request.
func checkGrant(t *testing.T, step int, before api.Resources, p Pod) {
	t.Helper()
	check := func(what string, b, a, req, unit uint64) {
		if a > max(b, req) {
			t.Fatalf("step %d: %s granted %d past request %d", step, what, a, req)
		}
		if a > b && a != req && (a-b)%unit != 0 {
			t.Fatalf("step %d: %s grew by %d, not whole units of %d", step, what, a-b, unit)
		}
	}
	check("cpu", uint64(before.VCPU), uint64(p.Reserved.VCPU), uint64(p.Requested.VCPU), uint64(p.Factor.VCPU))
	check("mem", uint64(before.Mem), uint64(p.Reserved.Mem), uint64(p.Requested.Mem), uint64(p.Factor.Mem))
}

func anyKey(rng *rand.Rand, c cluster) (PodKey, bool) {
	if len(c) == 0 {
		return PodKey{}, false
	}
	keys := make([]PodKey, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	// Map order is random but not seeded: sort for reproducible runs.
	sortKeys(keys)
	return keys[rng.Intn(len(keys))], true
}

func sortKeys(keys []PodKey) {
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j].Name < keys[j-1].Name; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
}

// The grant path alone: one speculative grant on a busy node, and re-granting
// every pod of a 100-pod node.
func BenchmarkGrant(b *testing.B) {
	s := newState("n")
	s.SetNode("n", res(400_000, 1600*gi))
	for i := 0; i < 100; i++ {
		s.SetPod(vmPod(fmt.Sprintf("p%d", i), "n", res(1000, 4*gi), res(1000, 4*gi), i))
	}
	k := PodKey{"ns", "p50"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.update(k, func(p *Pod) { p.Requested = res(2000, 8*gi) })
		if _, _, err := s.Grant(k); err != nil {
			b.Fatal(err)
		}
		s.update(k, func(p *Pod) { p.Requested = res(1000, 4*gi) })
		if _, _, err := s.Grant(k); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/grant")
}

func BenchmarkRegrantNode100(b *testing.B) {
	s := newState("n")
	s.SetNode("n", res(400_000, 1600*gi))
	keys := make([]PodKey, 100)
	for i := range keys {
		p := vmPod(fmt.Sprintf("p%d", i), "n", res(1000, 4*gi), res(2000, 8*gi), i)
		s.SetPod(p)
		keys[i] = p.Key
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, k := range keys {
			s.update(k, func(p *Pod) { p.Reserved = res(1000, 4*gi) })
			if _, _, err := s.Grant(k); err != nil {
				b.Fatal(err)
			}
		}
	}
}
