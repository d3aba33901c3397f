// Package ipam decides which address of an IPPool a VM gets: a pure
// function of the pool's range and allocations (docs/neonvm.md#network-and-ippool, the
// Whereabouts shape: allocations keyed by the decimal offset of the address
// from the start of the range). The controller reads and writes the pool;
// this package never touches the API.
package ipam

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// ErrPoolFull is Acquire finding no free address in the range.
var ErrPoolFull = errors.New("no free address left in the range")

// Range is an IPv4 network whose addresses are handed out.
type Range struct {
	prefix netip.Prefix
}

// ParseRange reads an IPv4 network in CIDR notation. The address must be
// the network's own (10.100.0.0/16, not 10.100.3.7/16): a pool keyed by
// offsets must agree with every reader on where offset 0 is.
func ParseRange(s string) (Range, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	if !p.Addr().Is4() {
		return Range{}, fmt.Errorf("range %q: only IPv4 ranges are supported (the guest's ip= argument and status.extraNetMask are IPv4)", s)
	}
	if p.Masked() != p {
		return Range{}, fmt.Errorf("range %q: not a network address (did you mean %s?)", s, p.Masked())
	}
	return Range{prefix: p}, nil
}

// MustParseRange is ParseRange for constants; it panics on a bad range.
func MustParseRange(s string) Range {
	r, err := ParseRange(s)
	if err != nil {
		panic(err)
	}
	return r
}

func (r Range) String() string { return r.prefix.String() }

// Bits is the prefix length.
func (r Range) Bits() int { return r.prefix.Bits() }

// Mask is the netmask in dotted form (status.extraNetMask), e.g. 255.255.0.0.
func (r Range) Mask() string {
	m := ^uint32(0) << (32 - r.prefix.Bits()) // Go: a shift by 32 gives 0
	return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}).String()
}

// usable is the first and last offset that may be handed out: all but the
// network and broadcast addresses, except in /31 and /32 (RFC 3021), which
// have neither.
func (r Range) usable() (first, last uint64) {
	size := uint64(1) << (32 - r.prefix.Bits())
	if r.prefix.Bits() >= 31 {
		return 0, size - 1
	}
	return 1, size - 2
}

// Size is how many addresses the range hands out.
func (r Range) Size() int {
	first, last := r.usable()
	return int(last - first + 1)
}

// Addr is the address at offset from the start of the range; false if the
// offset is past it.
func (r Range) Addr(offset uint64) (netip.Addr, bool) {
	size := uint64(1) << (32 - r.prefix.Bits())
	if offset >= size {
		return netip.Addr{}, false
	}
	b := r.prefix.Addr().As4()
	base := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	v := base + offset
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// Offset is a's offset from the start of the range; false if a is outside.
func (r Range) Offset(a netip.Addr) (uint64, bool) {
	if !a.Is4() || !r.prefix.Contains(a) {
		return 0, false
	}
	b, base := a.As4(), r.prefix.Addr().As4()
	return uint64(be32(b) - be32(base)), true
}

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// handsOut says whether offset is an address of the range that may be
// handed out.
func (r Range) handsOut(offset uint64) bool {
	first, last := r.usable()
	return offset >= first && offset <= last
}

// Key is the allocations key of offset.
func Key(offset uint64) string { return strconv.FormatUint(offset, 10) }

// parseKey reads an allocations key; false for one that is no offset.
func parseKey(k string) (uint64, bool) {
	v, err := strconv.ParseUint(k, 10, 32)
	return v, err == nil
}

// Lease is an address held by one id.
type Lease struct {
	Offset uint64
	Addr   netip.Addr
	// New is set when Acquire added the allocation (the pool must be
	// written); unset when id already held it.
	New bool
}

// Acquire returns id's address, adding an allocation to allocs (which it
// changes in place) when id holds none. An id already holding an address
// keeps it, so acquiring again is harmless. A new allocation takes prefer
// when that is in the range and free (a VM that recorded its address in
// its status gets the same one back if the pool lost it), else the lowest
// free address. Allocations of id that are not usable addresses of the
// range (a hand-edited pool) are dropped first.
func Acquire(r Range, allocs map[string]vmv1.IPAllocation, id, podRef string, prefer netip.Addr) (Lease, error) {
	if id == "" {
		return Lease{}, errors.New("acquire: empty id")
	}
	var held []uint64
	for k, a := range allocs {
		if a.ContainerID != id {
			continue
		}
		if off, ok := parseKey(k); ok && r.handsOut(off) {
			held = append(held, off)
		} else {
			delete(allocs, k)
		}
	}
	if len(held) > 0 {
		// More than one can only come from a hand edit: keep the lowest.
		slices.Sort(held)
		for _, off := range held[1:] {
			delete(allocs, Key(off))
		}
		addr, _ := r.Addr(held[0])
		return Lease{Offset: held[0], Addr: addr}, nil
	}
	off, ok := r.Offset(prefer)
	if !ok || !r.handsOut(off) {
		ok = false
	} else if _, taken := allocs[Key(off)]; taken {
		ok = false
	}
	if !ok {
		var err error
		if off, err = lowestFree(r, allocs); err != nil {
			return Lease{}, err
		}
	}
	allocs[Key(off)] = vmv1.IPAllocation{ContainerID: id, PodRef: podRef}
	addr, _ := r.Addr(off)
	return Lease{Offset: off, Addr: addr, New: true}, nil
}

// lowestFree is the lowest usable offset no allocation holds. It sorts the
// taken offsets rather than walking the range, so its cost follows the
// number of allocations, not the size of the range.
func lowestFree(r Range, allocs map[string]vmv1.IPAllocation) (uint64, error) {
	first, last := r.usable()
	taken := make([]uint64, 0, len(allocs))
	for k := range allocs {
		if off, ok := parseKey(k); ok && off >= first && off <= last {
			taken = append(taken, off)
		}
	}
	slices.Sort(taken)
	want := first
	for _, off := range taken {
		if off > want {
			break
		}
		if off == want {
			want++
		}
	}
	if want > last {
		return 0, fmt.Errorf("range %s (%d addresses): %w", r, r.Size(), ErrPoolFull)
	}
	return want, nil
}

// Release removes every allocation held by id from allocs and says
// whether there was any.
func Release(allocs map[string]vmv1.IPAllocation, id string) bool {
	found := false
	for k, a := range allocs {
		if a.ContainerID == id {
			delete(allocs, k)
			found = true
		}
	}
	return found
}

// InUse counts the allocations that hold a usable address of the range.
func InUse(r Range, allocs map[string]vmv1.IPAllocation) int {
	n := 0
	for k := range allocs {
		if off, ok := parseKey(k); ok && r.handsOut(off) {
			n++
		}
	}
	return n
}

// prefixOnes is the prefix length of a dotted IPv4 netmask, false when it
// is not one (255.0.255.0).
func prefixOnes(mask netip.Addr) (int, bool) {
	if !mask.Is4() {
		return 0, false
	}
	v := be32(mask.As4())
	ones := bits.LeadingZeros32(^v)
	if v<<ones != 0 {
		return 0, false
	}
	return ones, true
}

// ParseMask reads a dotted IPv4 netmask (status.extraNetMask) into its
// prefix length.
func ParseMask(s string) (int, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return 0, fmt.Errorf("netmask %q: %w", s, err)
	}
	ones, ok := prefixOnes(a)
	if !ok {
		return 0, fmt.Errorf("netmask %q: not a contiguous IPv4 netmask", s)
	}
	return ones, nil
}
