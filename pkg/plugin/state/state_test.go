package state

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

const gi = api.Bytes(1 << 30)

var cu = api.Resources{VCPU: 250, Mem: gi}

func res(milli uint32, mem api.Bytes) api.Resources {
	return api.Resources{VCPU: vmv(milli), Mem: mem}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func vmPod(name, node string, reserved, requested api.Resources, age int) Pod {
	return Pod{
		Key: PodKey{"ns", name}, Node: node, VM: name, CreatedAt: t0.Add(time.Duration(age) * time.Second),
		Reserved: reserved, Requested: requested, Factor: cu,
	}
}

func newState(nodes ...string) *State {
	s := New(Config{Watermark: 0.9, Scoring: ScoringConfig{MinUsageScore: 0.5, MaxUsageScore: 0, ScorePeak: 0.8}})
	for _, n := range nodes {
		s.SetNode(n, res(4000, 16*gi))
	}
	return s
}

func TestGrantRule(t *testing.T) {
	cases := []struct {
		name              string
		other             api.Resources // held by another pod on the node
		reserved, request api.Resources
		oc                Overcommit
		want              api.Resources
	}{
		{name: "fits whole", reserved: res(1000, 4*gi), request: res(2000, 8*gi), want: res(2000, 8*gi)},
		{name: "downscale applies at once", reserved: res(2000, 8*gi), request: res(500, 2*gi), want: res(500, 2*gi)},
		{name: "capped at free capacity in whole units",
			other: res(2600, 10*gi), reserved: res(500, 2*gi), request: res(2000, 8*gi),
			// free: 900m → 3 units of 250m; 4Gi → 4 units of 1Gi
			want: res(1250, 6*gi)},
		{name: "full node grants nothing", other: res(3000, 12*gi), reserved: res(1000, 4*gi), request: res(2000, 8*gi), want: res(1000, 4*gi)},
		{name: "partial unit not granted", other: res(2900, 11*gi+gi/2), reserved: res(1000, 4*gi), request: res(2000, 8*gi), want: res(1000, 4*gi)},
		{name: "unaligned request topped up exactly", reserved: res(1000, 4*gi), request: res(1100, 4*gi+100), want: res(1100, 4*gi+100)},
		{name: "mixed: cpu down, mem up", reserved: res(1000, 4*gi), request: res(500, 6*gi), want: res(500, 6*gi)},
		{name: "overcommit 2x doubles the room",
			other: res(3500, 15*gi), reserved: res(250, gi), request: res(2000, 4*gi),
			oc: Overcommit{CPU: 2000, Mem: 2000},
			// the pod counts for half: node 3500+125 of 4000 → 375 free → 750m room → 3 units;
			// mem 15Gi + 0.5Gi → 0.5Gi free → 1Gi room → 1 unit
			want: res(1000, 2*gi)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newState("n")
			if !c.other.IsZero() {
				s.SetPod(Pod{Key: PodKey{"ns", "other"}, Node: "n", Reserved: c.other, Requested: c.other})
			}
			p := vmPod("vm", "n", c.reserved, c.request, 0)
			p.Overcommit = c.oc
			s.SetPod(p)
			got, changed, err := s.Grant(p.Key)
			if err != nil {
				t.Fatal(err)
			}
			if got.Reserved != c.want {
				t.Fatalf("reserved %v, want %v", got.Reserved, c.want)
			}
			if changed != (c.want != c.reserved) {
				t.Fatalf("changed=%v", changed)
			}
			n, _ := s.Node("n")
			if n.OverBudget() {
				t.Fatalf("node over budget: %+v %+v", n.CPU, n.Mem)
			}
			checkSums(t, s)
		})
	}
}

func TestGrantUnknown(t *testing.T) {
	s := newState("n")
	if _, _, err := s.Grant(PodKey{"ns", "x"}); err == nil {
		t.Fatal("grant for an unknown pod succeeded")
	}
	s.SetPod(vmPod("vm", "gone", res(250, gi), res(500, gi), 0))
	if _, _, err := s.Grant(PodKey{"ns", "vm"}); err == nil {
		t.Fatal("grant on an unknown node succeeded")
	}
}

func TestOvercommitAccounting(t *testing.T) {
	s := newState("n")
	p := vmPod("vm", "n", res(1000, 4*gi), res(1000, 4*gi), 0)
	p.Overcommit = Overcommit{CPU: 4000, Mem: 1500}
	s.SetPod(p)
	n, _ := s.Node("n")
	if n.CPU.Reserved != 250 || n.Mem.Reserved != uint64((4*gi*1000+1499)/1500) {
		t.Fatalf("reserved %d / %d", n.CPU.Reserved, n.Mem.Reserved)
	}
	if n.CPU.Committed != 1000 || n.Mem.Committed != uint64(4*gi) {
		t.Fatalf("committed %d / %d", n.CPU.Committed, n.Mem.Committed)
	}
	s.RemovePod(p.Key)
	if n.CPU.Reserved != 0 || n.Mem.Reserved != 0 || n.CPU.Committed != 0 {
		t.Fatalf("not freed: %+v %+v", n.CPU, n.Mem)
	}
}

func TestFits(t *testing.T) {
	s := newState("n")
	held := []Pod{vmPod("a", "n", res(3000, 8*gi), res(3000, 8*gi), 0)}
	if ok, _ := s.Fits("n", held, vmPod("b", "", res(1000, 8*gi), res(1000, 8*gi), 0)); !ok {
		t.Fatal("exact fit refused")
	}
	if ok, _ := s.Fits("n", held, vmPod("b", "", res(1250, gi), res(1250, gi), 0)); ok {
		t.Fatal("cpu overcommit allowed")
	}
	if ok, _ := s.Fits("n", held, vmPod("b", "", res(250, 9*gi), res(250, 9*gi), 0)); ok {
		t.Fatal("mem overcommit allowed")
	}
	if _, err := s.Fits("nope", nil, Pod{}); err == nil {
		t.Fatal("unknown node fits")
	}
}

func TestScore(t *testing.T) {
	s := newState("small", "big", "full")
	s.SetNode("big", res(8000, 32*gi))
	pod := vmPod("new", "", res(1000, 4*gi), res(1000, 4*gi), 0)
	// small: f = 0.25 → 0.5 + 0.5/0.8*0.25 = 0.65625, scaled by 4/8 → 32.
	if got := s.Score("small", pod); got != 32 {
		t.Fatalf("small: %d", got)
	}
	// big: f = 0.125 → 0.578125 → 57.
	if got := s.Score("big", pod); got != 57 {
		t.Fatalf("big: %d", got)
	}
	s.SetPod(vmPod("hog", "full", res(3500, 4*gi), res(3500, 4*gi), 0))
	if got := s.Score("full", pod); got != 0 {
		t.Fatalf("over budget scored %d", got)
	}
	// At the peak the curve is 1; past it, it falls towards MaxUsageScore.
	sc := s.Config().Scoring
	if curve(sc, 0.8) != 1 || curve(sc, 1) != 0 || curve(sc, 0) != 0.5 || curve(sc, 0.9) >= 1 {
		t.Fatal("curve shape")
	}
}

func TestMigrationSelection(t *testing.T) {
	s := newState("n")
	// Watermark 0.9 of 4000m/16Gi = 3600m/14.4Gi.
	s.SetPod(vmPod("young", "n", res(1000, 2*gi), res(1000, 2*gi), 30))
	s.SetPod(vmPod("old", "n", res(1000, 2*gi), res(1000, 2*gi), 10))
	s.SetPod(vmPod("middle", "n", res(1000, 2*gi), res(1000, 2*gi), 20))
	s.SetPod(vmPod("pinned", "n", res(500, 2*gi), res(500, 2*gi), 0))
	for _, name := range []string{"young", "old", "middle"} {
		s.update(PodKey{"ns", name}, func(p *Pod) { p.Migratable = true })
	}
	if picks := s.MigrationsFor("n"); len(picks) != 0 {
		t.Fatalf("under the watermark, picked %v", picks)
	}
	s.SetPod(vmPod("big", "n", res(250, gi), res(250, gi), 40)) // 3750m > 3600m
	picks := s.MigrationsFor("n")
	if len(picks) != 1 || picks[0].Key.Name != "old" {
		t.Fatalf("picked %v, want the oldest migratable (old)", names(picks))
	}
	s.SetMigrating(picks[0].Key, true)
	if n, _ := s.Node("n"); n.CPU.Migrating != 1000 {
		t.Fatalf("migrating %d", n.CPU.Migrating)
	}
	if picks := s.MigrationsFor("n"); len(picks) != 0 {
		t.Fatalf("already migrating enough, picked %v", names(picks))
	}
	// Far over: takes oldest first until under, skipping the unmigratable.
	s.SetPod(vmPod("huge", "n", res(2000, 2*gi), res(2000, 2*gi), 50))
	picks = s.MigrationsFor("n")
	if got := names(picks); fmt.Sprint(got) != "[middle young]" {
		t.Fatalf("picked %v", got)
	}
	// A pod bigger than the watermark itself is never picked.
	s2 := newState("m")
	p := vmPod("giant", "m", res(3800, gi), res(3800, gi), 0)
	p.Migratable = true
	s2.SetPod(p)
	if picks := s2.MigrationsFor("m"); len(picks) != 0 {
		t.Fatalf("picked a pod past the watermark: %v", names(picks))
	}
}

func names(ps []Pod) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Key.Name)
	}
	return out
}

// checkSums verifies every node's sums against its pods.
func checkSums(t *testing.T, s *State) {
	t.Helper()
	for name, n := range s.nodes {
		var sum, committed, migrating amounts
		for _, p := range n.pods {
			c := p.onNode()
			sum = sum.add(c)
			committed = committed.add(amounts{uint64(p.Reserved.VCPU), uint64(p.Reserved.Mem)})
			if p.Migrating {
				migrating = migrating.add(c)
			}
		}
		if sum.cpu != n.CPU.Reserved || sum.mem != n.Mem.Reserved {
			t.Fatalf("node %s: reserved %d/%d, pods sum to %d/%d", name, n.CPU.Reserved, n.Mem.Reserved, sum.cpu, sum.mem)
		}
		if committed.cpu != n.CPU.Committed || committed.mem != n.Mem.Committed || migrating.cpu != n.CPU.Migrating || migrating.mem != n.Mem.Migrating {
			t.Fatalf("node %s: committed/migrating sums off", name)
		}
	}
}
