package state

import (
	"fmt"
	"math"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

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
