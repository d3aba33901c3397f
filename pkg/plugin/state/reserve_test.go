package state

import (
	"errors"
	"fmt"
	"math/rand"
	"testing"
)

func TestReserve(t *testing.T) {
	size := res(1000, 4*gi)
	cases := []struct {
		name string
		// known is the state's record before Reserve (nil: unknown).
		known *Pod
		node  string
		// want is where the pod is held after, and whether tentatively.
		wantNode      string
		wantTentative bool
		wantErr       error
	}{
		{name: "unknown pod; the scheduler's copy names its node", node: "b", wantNode: "b", wantTentative: true},
		{name: "watched, not bound", known: &Pod{}, node: "b", wantNode: "b", wantTentative: true},
		{name: "bound to the same node: idempotent", known: &Pod{Node: "b"}, node: "b", wantNode: "b"},
		{name: "bound elsewhere: refused, keeps its place", known: &Pod{Node: "a"}, node: "b", wantNode: "a", wantErr: ErrBoundElsewhere},
		{name: "held tentatively elsewhere: moves", known: &Pod{Node: "a", Tentative: true}, node: "b", wantNode: "b", wantTentative: true},
		{name: "held tentatively here: stays", known: &Pod{Node: "b", Tentative: true}, node: "b", wantNode: "b", wantTentative: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newState("a", "b")
			key := PodKey{"ns", "p"}
			if tc.known != nil {
				k := *tc.known
				k.Key, k.Reserved, k.Requested = key, size, size
				s.SetPod(k)
			}
			// What the scheduler passes to Reserve: its assumed copy, naming
			// the node it picked.
			err := s.Reserve(Pod{Key: key, Node: tc.node, Reserved: size, Requested: size}, tc.node)
			if !errors.Is(err, tc.wantErr) || (err != nil) != (tc.wantErr != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			got, _ := s.Pod(key)
			if got.Node != tc.wantNode || got.Tentative != tc.wantTentative {
				t.Fatalf("held on %q tentative=%v, want %q tentative=%v", got.Node, got.Tentative, tc.wantNode, tc.wantTentative)
			}
			for _, n := range []string{"a", "b"} {
				node, _ := s.Node(n)
				want := uint64(0)
				if n == tc.wantNode {
					want = 1000
				}
				if node.CPU.Reserved != want {
					t.Fatalf("node %s holds %dm, want %dm", n, node.CPU.Reserved, want)
				}
			}
			checkSums(t, s)
		})
	}
}

func TestUnreserve(t *testing.T) {
	size := res(1000, 4*gi)
	cases := []struct {
		name     string
		known    *Pod
		node     string
		forget   bool
		dropped  bool
		wantNode string
		wantGone bool
	}{
		{name: "tentative here, watched: kept, placed nowhere", known: &Pod{Node: "b", Tentative: true}, node: "b", dropped: true},
		{name: "tentative here, never watched: forgotten", known: &Pod{Node: "b", Tentative: true}, node: "b", forget: true, dropped: true, wantGone: true},
		{name: "bound here: untouched", known: &Pod{Node: "b"}, node: "b", forget: true, wantNode: "b"},
		{name: "tentative elsewhere: untouched", known: &Pod{Node: "a", Tentative: true}, node: "b", forget: true, wantNode: "a"},
		{name: "bound elsewhere (a refused Reserve): untouched", known: &Pod{Node: "a"}, node: "b", wantNode: "a"},
		{name: "unknown", node: "b", forget: true, wantGone: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newState("a", "b")
			key := PodKey{"ns", "p"}
			if tc.known != nil {
				k := *tc.known
				k.Key, k.Reserved, k.Requested = key, size, size
				s.SetPod(k)
			}
			if got := s.Unreserve(key, tc.node, tc.forget); got != tc.dropped {
				t.Fatalf("dropped %v, want %v", got, tc.dropped)
			}
			got, ok := s.Pod(key)
			if ok == tc.wantGone || got.Node != tc.wantNode {
				t.Fatalf("after: %+v known=%v", got, ok)
			}
			checkSums(t, s)
		})
	}
}

// The scheduler's side of a pod's life, in any order the plugin's watch and
// the scheduler's own can produce: attempts that Reserve (with the assumed
// copy naming the node), fail and Unreserve, bindings the watch shows, the
// watch's first sight of a pending pod, repeated attempts after a binding,
// deletions. Throughout, a bound pod stays held where it is bound, every
// pod is held on at most one node, and the node sums match their pods.
func TestPropertyReserveKeepsBindings(t *testing.T) {
	for seed := int64(0); seed < 200; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			nodes := []string{"a", "b", "c"}
			s := newState(nodes...)
			type truth struct {
				bound     string // the apiserver's spec.nodeName
				watched   bool
				seenBound bool   // the watch has shown the binding
				attempt   string // node of the attempt in flight
			}
			pods := map[PodKey]*truth{}
			for step := 0; step < 300; step++ {
				key := PodKey{"ns", fmt.Sprintf("p%d", rng.Intn(6))}
				tr := pods[key]
				if tr == nil {
					tr = &truth{}
					pods[key] = tr
				}
				size := res(uint32(250*(1+rng.Intn(4))), gi)
				node := nodes[rng.Intn(len(nodes))]
				var desc string
				switch op := rng.Intn(6); op {
				case 0: // an attempt reaches Reserve
					if tr.attempt != "" || (tr.bound != "" && !tr.seenBound) {
						// One attempt in flight per pod; and once bound, the
						// scheduler's cache holds the pod until its own watch
						// shows the binding, refusing to assume it again (no
						// Reserve), and its watch leads the plugin's.
						continue
					}
					err := s.Reserve(Pod{Key: key, Node: node, Reserved: size, Requested: size}, node)
					switch {
					case tr.bound == "" && err != nil:
						t.Fatalf("step %d: Reserve of an unbound pod: %v", step, err)
					case tr.bound != "" && tr.bound != node && !errors.Is(err, ErrBoundElsewhere):
						t.Fatalf("step %d: Reserve on %s of a pod bound to %s: %v", step, node, tr.bound, err)
					}
					if err == nil && tr.bound == "" {
						tr.attempt = node
					}
					desc = "reserve " + key.Name + " on " + node
				case 1: // the attempt fails: Unreserve
					if tr.attempt == "" {
						continue
					}
					s.Unreserve(key, tr.attempt, !tr.watched)
					tr.attempt = ""
					desc = "unreserve " + key.Name
				case 2: // the binding succeeds
					if tr.attempt == "" {
						continue
					}
					tr.bound, tr.attempt = tr.attempt, ""
					desc = "bind " + key.Name
				case 3, 4: // the watch shows the pod as it is
					rec, ok := s.Pod(key)
					if !ok {
						rec = Pod{Key: key, Reserved: size, Requested: size}
					}
					if tr.bound != "" {
						rec.Node, rec.Tentative = tr.bound, false
					} else if !rec.Tentative {
						rec.Node = ""
					}
					s.SetPod(rec)
					tr.watched, tr.seenBound = true, tr.bound != ""
					desc = "watch " + key.Name
				case 5: // deleted (once no attempt is in flight)
					if tr.attempt != "" {
						continue
					}
					s.RemovePod(key)
					delete(pods, key)
					desc = "delete " + key.Name
				}
				for k, tr := range pods {
					rec, ok := s.Pod(k)
					if tr.bound != "" && (!ok || rec.Node != tr.bound || rec.Tentative != !tr.seenBound) {
						t.Fatalf("step %d (%s): %s bound to %s, held %+v", step, desc, k.Name, tr.bound, rec)
					}
					if tr.attempt != "" && (!ok || rec.Node != tr.attempt) {
						t.Fatalf("step %d (%s): %s reserved on %s, held %+v", step, desc, k.Name, tr.attempt, rec)
					}
					held := 0
					for _, n := range nodes {
						nd, _ := s.Node(n)
						if _, on := nd.pods[k]; on {
							held++
						}
					}
					if held > 1 {
						t.Fatalf("step %d (%s): %s held on %d nodes", step, desc, k.Name, held)
					}
				}
				checkSums(t, s)
			}
		})
	}
}
