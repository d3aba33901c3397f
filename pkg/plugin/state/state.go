// Package state is the scheduler plugin's accounting, with no I/O: each
// node's capacity and what its pods reserve, per resource; the grant rule
// that turns an agent's request into an approval; Filter's over-budget test;
// the Score curve; and which pods to migrate off a node past its watermark.
// The plugin feeds it from watches and applies its answers to the cluster.
package state

import (
	"fmt"
	"math"
	"sort"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

// PodKey names a pod.
type PodKey struct{ Namespace, Name string }

func (k PodKey) String() string { return k.Namespace + "/" + k.Name }

// Overcommit is how far a pod's reservation may be overcommitted, per
// resource, in thousandths: 1000 is none, 2000 means the pod counts for
// half its size on its node.
type Overcommit struct{ CPU, Mem uint32 }

// NoOvercommit counts every pod at its full size.
var NoOvercommit = Overcommit{CPU: 1000, Mem: 1000}

// Pod is what the plugin knows of one pod.
type Pod struct {
	Key PodKey
	// Node is where the pod is bound or tentatively reserved; empty if
	// neither.
	Node string
	// Tentative is set between Reserve and the pod's binding showing up.
	Tentative bool
	// CreatedAt orders migration candidates (oldest first).
	CreatedAt time.Time
	// VM is the VirtualMachine the pod runs, empty for other pods.
	VM string
	// Reserved is what the pod holds on its node (the approved amount for
	// a VM); Requested is what it asks for.
	Reserved, Requested api.Resources
	// Factor is the compute unit grants are made in (VM pods only).
	Factor api.Resources
	// Overcommit for this pod; the zero value means NoOvercommit.
	Overcommit Overcommit
	// Migratable pods may be moved off a node past its watermark;
	// Migrating ones already are being moved.
	Migratable, Migrating bool
}

func (p *Pod) overcommit() Overcommit {
	oc := p.Overcommit
	if oc.CPU == 0 {
		oc.CPU = 1000
	}
	if oc.Mem == 0 {
		oc.Mem = 1000
	}
	return oc
}

// onNode is what p counts for on its node: ceil(reserved*1000/overcommit).
func (p *Pod) onNode() amounts {
	oc := p.overcommit()
	return amounts{
		cpu: scaleDown(uint64(p.Reserved.VCPU), oc.CPU),
		mem: scaleDown(uint64(p.Reserved.Mem), oc.Mem),
	}
}

func scaleDown(v uint64, ocMilli uint32) uint64 {
	if ocMilli == 1000 {
		return v
	}
	hi, lo := mulDiv(v, 1000, uint64(ocMilli))
	if hi {
		return math.MaxUint64
	}
	return lo
}

// mulDiv is ceil(v*m/d), reporting overflow.
func mulDiv(v, m, d uint64) (bool, uint64) {
	if v != 0 && m > math.MaxUint64/v {
		return true, 0
	}
	return false, (v*m + d - 1) / d
}

type amounts struct{ cpu, mem uint64 }

func (a amounts) add(b amounts) amounts { return amounts{a.cpu + b.cpu, a.mem + b.mem} }

func sat(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// Resource is one resource's accounting on a node. CPU is in milli-CPU,
// memory in bytes.
type Resource struct {
	// Total is the node's allocatable amount.
	Total uint64
	// Reserved is what pods hold, after overcommit.
	Reserved uint64
	// Committed is what pods hold before overcommit.
	Committed uint64
	// Migrating is the part of Reserved held by pods being migrated away.
	Migrating uint64
	// Watermark is Total×watermark: past it, pods migrate away.
	Watermark uint64
}

// Node is one node's accounting.
type Node struct {
	Name     string
	CPU, Mem Resource
	pods     map[PodKey]*Pod
}

// OverBudget reports whether the node's pods hold more than it has.
func (n *Node) OverBudget() bool {
	return n.CPU.Reserved > n.CPU.Total || n.Mem.Reserved > n.Mem.Total
}

// PodCount is how many pods the node holds.
func (n *Node) PodCount() int { return len(n.pods) }

// Config holds the tunables of the rules.
type Config struct {
	// Watermark is the fraction of Total past which pods are migrated away.
	Watermark float64
	Scoring   ScoringConfig
}

// ScoringConfig shapes the Score curve: MinUsageScore at an empty node,
// rising to 1 at ScorePeak usage, falling to MaxUsageScore at a full one.
type ScoringConfig struct {
	MinUsageScore, MaxUsageScore, ScorePeak float64
}

// State is the accounting for the whole cluster. It is not safe for
// concurrent use; the plugin holds a lock around it.
type State struct {
	cfg   Config
	nodes map[string]*Node
	pods  map[PodKey]*Pod
	// maxTotal is the largest node seen, per resource, for Score's scale.
	maxTotal amounts
}

// New returns empty accounting.
func New(cfg Config) *State {
	return &State{cfg: cfg, nodes: map[string]*Node{}, pods: map[PodKey]*Pod{}}
}

// Config is the configuration the state was made with.
func (s *State) Config() Config { return s.cfg }

// SetNode adds a node or updates its capacity.
func (s *State) SetNode(name string, total api.Resources) *Node {
	n := s.nodes[name]
	if n == nil {
		n = &Node{Name: name, pods: map[PodKey]*Pod{}}
		s.nodes[name] = n
		// Pods seen before their node count as soon as it appears.
		for _, p := range s.pods {
			if p.Node == name {
				s.attach(n, p)
			}
		}
	}
	n.CPU.Total, n.Mem.Total = uint64(total.VCPU), uint64(total.Mem)
	n.CPU.Watermark = uint64(float64(n.CPU.Total) * s.cfg.Watermark)
	n.Mem.Watermark = uint64(float64(n.Mem.Total) * s.cfg.Watermark)
	s.maxTotal.cpu = max(s.maxTotal.cpu, n.CPU.Total)
	s.maxTotal.mem = max(s.maxTotal.mem, n.Mem.Total)
	return n
}

// RemoveNode forgets a node; its pods stay known but count nowhere.
func (s *State) RemoveNode(name string) {
	delete(s.nodes, name)
}

// Node returns a node's accounting.
func (s *State) Node(name string) (*Node, bool) {
	n, ok := s.nodes[name]
	return n, ok
}

// Nodes calls f for every node, in no particular order.
func (s *State) Nodes(f func(*Node)) {
	for _, n := range s.nodes {
		f(n)
	}
}

// Pod returns a copy of a pod's record.
func (s *State) Pod(key PodKey) (Pod, bool) {
	p, ok := s.pods[key]
	if !ok {
		return Pod{}, false
	}
	return *p, true
}

// PodsOn returns copies of the pods on a node, oldest first.
func (s *State) PodsOn(node string) []Pod {
	n := s.nodes[node]
	if n == nil {
		return nil
	}
	out := make([]Pod, 0, len(n.pods))
	for _, p := range n.pods {
		out = append(out, *p)
	}
	sortOldestFirst(out)
	return out
}

func sortOldestFirst(pods []Pod) {
	sort.Slice(pods, func(i, j int) bool {
		if !pods[i].CreatedAt.Equal(pods[j].CreatedAt) {
			return pods[i].CreatedAt.Before(pods[j].CreatedAt)
		}
		return pods[i].Key.String() < pods[j].Key.String()
	})
}

// SetPod adds a pod or replaces its record, moving its reservation to the
// node it names now.
func (s *State) SetPod(p Pod) {
	if old := s.pods[p.Key]; old != nil {
		s.detach(old)
	}
	np := p
	s.pods[p.Key] = &np
	if n := s.nodes[np.Node]; n != nil {
		s.attach(n, &np)
	}
}

// RemovePod forgets a pod, freeing what it held.
func (s *State) RemovePod(key PodKey) (Pod, bool) {
	p := s.pods[key]
	if p == nil {
		return Pod{}, false
	}
	s.detach(p)
	delete(s.pods, key)
	return *p, true
}

func (s *State) attach(n *Node, p *Pod) {
	n.pods[p.Key] = p
	c := p.onNode()
	n.CPU.Reserved += c.cpu
	n.Mem.Reserved += c.mem
	n.CPU.Committed += uint64(p.Reserved.VCPU)
	n.Mem.Committed += uint64(p.Reserved.Mem)
	if p.Migrating {
		n.CPU.Migrating += c.cpu
		n.Mem.Migrating += c.mem
	}
}

func (s *State) detach(p *Pod) {
	n := s.nodes[p.Node]
	if n == nil || n.pods[p.Key] != p {
		return
	}
	delete(n.pods, p.Key)
	c := p.onNode()
	n.CPU.Reserved = sat(n.CPU.Reserved, c.cpu)
	n.Mem.Reserved = sat(n.Mem.Reserved, c.mem)
	n.CPU.Committed = sat(n.CPU.Committed, uint64(p.Reserved.VCPU))
	n.Mem.Committed = sat(n.Mem.Committed, uint64(p.Reserved.Mem))
	if p.Migrating {
		n.CPU.Migrating = sat(n.CPU.Migrating, c.cpu)
		n.Mem.Migrating = sat(n.Mem.Migrating, c.mem)
	}
}

// update applies f to the pod's record, keeping the node's sums right.
func (s *State) update(key PodKey, f func(*Pod)) (Pod, bool) {
	p := s.pods[key]
	if p == nil {
		return Pod{}, false
	}
	n := s.nodes[p.Node]
	attached := n != nil && n.pods[key] == p
	if attached {
		s.detach(p)
	}
	f(p)
	if n := s.nodes[p.Node]; n != nil && (attached || p.Node != "") {
		s.attach(n, p)
	}
	return *p, true
}

// SetMigrating marks a pod as being migrated away (or no longer).
func (s *State) SetMigrating(key PodKey, migrating bool) {
	s.update(key, func(p *Pod) { p.Migrating = migrating })
}

// Grant applies the grant rule to a pod's request and returns the pod's new
// record, and whether its reservation changed. A request at or below the
// reservation lowers it to the request at once (a downscale is already
// done); one above it is granted in whole compute units as far as the
// node's free capacity allows, and never past the request. A pod that is
// on no known node gets nothing new.
func (s *State) Grant(key PodKey) (Pod, bool, error) {
	p := s.pods[key]
	if p == nil {
		return Pod{}, false, fmt.Errorf("grant for %s: unknown pod", key)
	}
	n := s.nodes[p.Node]
	if n == nil || n.pods[key] != p {
		return *p, false, fmt.Errorf("grant for %s: node %q unknown", key, p.Node)
	}
	oc := p.overcommit()
	before := p.Reserved
	// Free capacity excludes the pod's own share, which grantOne
	// accounts for by difference.
	cpu := grantOne(n.CPU.Total, n.CPU.Reserved, uint64(p.Reserved.VCPU), uint64(p.Requested.VCPU), uint64(p.Factor.VCPU), oc.CPU)
	mem := grantOne(n.Mem.Total, n.Mem.Reserved, uint64(p.Reserved.Mem), uint64(p.Requested.Mem), uint64(p.Factor.Mem), oc.Mem)
	if cpu > math.MaxUint32 {
		cpu = math.MaxUint32
	}
	after := api.Resources{VCPU: vmv1.MilliCPU(cpu), Mem: api.Bytes(mem)}
	if after == before {
		return *p, false, nil
	}
	out, _ := s.update(key, func(p *Pod) { p.Reserved = after })
	return out, true, nil
}

// grantOne is the grant rule for one resource. Node amounts are after
// overcommit, pod amounts before.
func grantOne(total, nodeReserved, reserved, requested, factor uint64, ocMilli uint32) uint64 {
	if requested <= reserved {
		return requested
	}
	if factor == 0 {
		return reserved
	}
	free := sat(total, nodeReserved)
	// In the pod's own units, free capacity is free×overcommit.
	room := free
	if ocMilli != 1000 {
		if free > math.MaxUint64/uint64(ocMilli) {
			room = math.MaxUint64
		} else {
			room = free * uint64(ocMilli) / 1000
		}
	}
	inc := min(room/factor*factor, requested-reserved)
	// Rounding in the overcommit division may make the node count the
	// increase as slightly more than room: step down until it fits.
	for inc > 0 && scaleDown(reserved+inc, ocMilli)-scaleDown(reserved, ocMilli) > free {
		inc = (inc - 1) / factor * factor
	}
	return reserved + inc
}

// Placed returns a pod that may be granted more now: known, placed by its
// binding (a tentative placement from Reserve may still be undone), on a
// known node.
func (s *State) Placed(key PodKey) (Pod, bool) {
	p := s.pods[key]
	if p == nil || p.Node == "" || p.Tentative || s.nodes[p.Node] == nil {
		return Pod{}, false
	}
	return *p, true
}

// GrantRequest applies the grant rule to a request the pod's record does
// not hold yet: requested in units of factor, after lowering the
// reservation to lowerTo if that is less (an agent giving back a permit it
// never received). It returns the granted record, or false, with the
// record unchanged, when the pod is not Placed or the grant fails.
func (s *State) GrantRequest(key PodKey, requested, factor api.Resources, lowerTo *api.Resources) (Pod, bool) {
	before, ok := s.Placed(key)
	if !ok {
		return Pod{}, false
	}
	rec := before
	if lowerTo != nil && lowerTo.FitsIn(rec.Reserved) {
		rec.Reserved = *lowerTo
	}
	rec.Requested, rec.Factor = requested, factor
	s.SetPod(rec)
	granted, _, err := s.Grant(key)
	if err != nil {
		s.SetPod(before)
		return Pod{}, false
	}
	return granted, true
}
