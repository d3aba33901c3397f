package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"testing/quick"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

func TestParseRange(t *testing.T) {
	for _, c := range []struct {
		in, mask string
		size     int
		err      string
	}{
		{in: "10.100.0.0/16", mask: "255.255.0.0", size: 65534},
		{in: "192.168.7.0/24", mask: "255.255.255.0", size: 254},
		{in: "10.0.0.0/30", mask: "255.255.255.252", size: 2},
		{in: "10.0.0.0/31", mask: "255.255.255.254", size: 2},
		{in: "10.0.0.7/32", mask: "255.255.255.255", size: 1},
		{in: "10.100.3.7/16", err: `range "10.100.3.7/16": not a network address (did you mean 10.100.0.0/16?)`},
		{in: "fd00::/64", err: `range "fd00::/64": only IPv4 ranges are supported (the guest's ip= argument and status.extraNetMask are IPv4)`},
		{in: "10.100.0.0", err: `range "10.100.0.0": netip.ParsePrefix("10.100.0.0"): no '/'`},
	} {
		r, err := ParseRange(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%s: error %v, want %s", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if r.Mask() != c.mask || r.Size() != c.size || r.String() != c.in {
			t.Errorf("%s: mask %s size %d string %s, want %s %d", c.in, r.Mask(), r.Size(), r, c.mask, c.size)
		}
	}
}

func TestAddrAndOffset(t *testing.T) {
	r := MustParseRange("10.100.0.0/16")
	for _, c := range []struct {
		off  uint64
		addr string
	}{{0, "10.100.0.0"}, {1, "10.100.0.1"}, {256, "10.100.1.0"}, {65535, "10.100.255.255"}} {
		a, ok := r.Addr(c.off)
		if !ok || a.String() != c.addr {
			t.Errorf("Addr(%d) = %s %v, want %s", c.off, a, ok, c.addr)
		}
		if off, ok := r.Offset(netip.MustParseAddr(c.addr)); !ok || off != c.off {
			t.Errorf("Offset(%s) = %d %v, want %d", c.addr, off, ok, c.off)
		}
	}
	if _, ok := r.Addr(65536); ok {
		t.Error("Addr past the range")
	}
	if _, ok := r.Offset(netip.MustParseAddr("10.101.0.1")); ok {
		t.Error("Offset outside the range")
	}
}

func allocs(kv ...string) map[string]vmv1.IPAllocation {
	m := map[string]vmv1.IPAllocation{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = vmv1.IPAllocation{ContainerID: kv[i+1], PodRef: "ns/" + kv[i+1]}
	}
	return m
}

func TestAcquire(t *testing.T) {
	for _, c := range []struct {
		name   string
		rng    string
		before map[string]vmv1.IPAllocation
		id     string
		prefer netip.Addr
		want   string // address, or error text
		isNew  bool
		after  map[string]vmv1.IPAllocation
	}{
		{name: "empty pool: the first address after the network's", rng: "10.100.0.0/16", before: allocs(),
			id: "a", want: "10.100.0.1", isNew: true, after: allocs("1", "a")},
		{name: "the lowest free, filling a gap", rng: "10.100.0.0/16", before: allocs("1", "a", "3", "c"),
			id: "b", want: "10.100.0.2", isNew: true, after: allocs("1", "a", "2", "b", "3", "c")},
		{name: "an id holding an address keeps it", rng: "10.100.0.0/16", before: allocs("1", "a", "7", "b"),
			id: "b", want: "10.100.0.7", after: allocs("1", "a", "7", "b")},
		{name: "holding wins over prefer", rng: "10.100.0.0/16", before: allocs("7", "b"),
			id: "b", prefer: netip.MustParseAddr("10.100.0.9"), want: "10.100.0.7", after: allocs("7", "b")},
		{name: "a free preferred address is taken", rng: "10.100.0.0/16", before: allocs("1", "a"),
			id: "b", prefer: netip.MustParseAddr("10.100.2.9"), want: "10.100.2.9", isNew: true, after: allocs("1", "a", "521", "b")},
		{name: "a preferred address held by another id is not", rng: "10.100.0.0/16", before: allocs("1", "a", "2", "c"),
			id: "b", prefer: netip.MustParseAddr("10.100.0.2"), want: "10.100.0.3", isNew: true, after: allocs("1", "a", "2", "c", "3", "b")},
		{name: "a preferred address outside the range is not", rng: "10.100.0.0/16", before: allocs(),
			id: "b", prefer: netip.MustParseAddr("10.101.0.2"), want: "10.100.0.1", isNew: true, after: allocs("1", "b")},
		{name: "a preferred broadcast address is not", rng: "10.0.0.0/24", before: allocs(),
			id: "b", prefer: netip.MustParseAddr("10.0.0.255"), want: "10.0.0.1", isNew: true, after: allocs("1", "b")},
		{name: "the broadcast address is never handed out", rng: "10.0.0.0/30", before: allocs("1", "a", "2", "b"),
			id: "c", want: "range 10.0.0.0/30 (2 addresses): no free address left in the range", after: allocs("1", "a", "2", "b")},
		{name: "a /31 hands out both", rng: "10.0.0.0/31", before: allocs("0", "a"),
			id: "b", want: "10.0.0.1", isNew: true, after: allocs("0", "a", "1", "b")},
		{name: "a /32 hands out its one", rng: "10.0.0.5/32", before: allocs(),
			id: "b", want: "10.0.0.5", isNew: true, after: allocs("0", "b")},
		{name: "keys that are no usable offset neither block nor are touched", rng: "10.0.0.0/24",
			before: allocs("x", "other", "0", "net", "255", "bcast", "900", "past"),
			id:     "b", want: "10.0.0.1", isNew: true, after: allocs("x", "other", "0", "net", "255", "bcast", "900", "past", "1", "b")},
		{name: "the id's unusable allocations are dropped", rng: "10.0.0.0/24", before: allocs("0", "b", "900", "b", "2", "a"),
			id: "b", want: "10.0.0.1", isNew: true, after: allocs("1", "b", "2", "a")},
		{name: "an id holding two (a hand edit) keeps the lowest", rng: "10.0.0.0/24", before: allocs("9", "b", "4", "b"),
			id: "b", want: "10.0.0.4", after: allocs("4", "b")},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := Acquire(MustParseRange(c.rng), c.before, c.id, "ns/"+c.id, c.prefer)
			got := l.Addr.String()
			if err != nil {
				got = err.Error()
			}
			if got != c.want || l.New != c.isNew {
				t.Errorf("got %s new=%v, want %s new=%v", got, l.New, c.want, c.isNew)
			}
			if !reflect.DeepEqual(c.before, c.after) {
				t.Errorf("allocations %v, want %v", c.before, c.after)
			}
		})
	}
}

func TestAcquireFullIsErrPoolFull(t *testing.T) {
	r := MustParseRange("10.0.0.0/29")
	a := allocs()
	for i := 0; i < r.Size(); i++ {
		if _, err := Acquire(r, a, fmt.Sprint(i), "", netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Acquire(r, a, "one-more", "", netip.Addr{}); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("error %v, want ErrPoolFull", err)
	}
	if InUse(r, a) != r.Size() {
		t.Fatalf("InUse %d, want %d", InUse(r, a), r.Size())
	}
}

func TestRelease(t *testing.T) {
	a := allocs("1", "a", "2", "b", "9", "b")
	if !Release(a, "b") {
		t.Error("Release(b) found nothing")
	}
	if Release(a, "b") || Release(a, "zz") {
		t.Error("Release of an id holding nothing reported a change")
	}
	if !reflect.DeepEqual(a, allocs("1", "a")) {
		t.Errorf("allocations %v", a)
	}
}

// The pool against a model through random acquires and releases: no
// address is ever held twice, each id holds at most one, only usable
// addresses are handed out, a new allocation is always the lowest free
// address (or the preferred one when free), acquiring again returns the
// same address, and the pool is full exactly when every usable address
// is held.
func TestAcquireReleaseProperty(t *testing.T) {
	prop := func(seed uint64, bitsSel uint8) bool {
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		r := MustParseRange([]string{"10.1.0.0/29", "10.1.0.0/28", "10.1.0.0/30", "10.1.0.0/31", "10.1.0.0/32"}[bitsSel%5])
		pool := map[string]vmv1.IPAllocation{}
		model := map[string]uint64{} // id -> offset
		first, last := r.usable()
		for step := 0; step < 200; step++ {
			id := fmt.Sprint(rng.IntN(20))
			if rng.IntN(3) == 0 {
				Release(pool, id)
				delete(model, id)
				continue
			}
			var prefer netip.Addr
			if rng.IntN(4) == 0 {
				prefer, _ = r.Addr(rng.Uint64N(uint64(1) << (32 - r.Bits())))
			}
			l, err := Acquire(r, pool, id, "ns/"+id, prefer)
			held, had := model[id]
			switch {
			case had:
				if err != nil || l.New || l.Offset != held {
					t.Logf("step %d: id %s held %d, got %+v %v", step, id, held, l, err)
					return false
				}
			case len(model) == r.Size():
				if !errors.Is(err, ErrPoolFull) {
					t.Logf("step %d: full pool gave %+v %v", step, l, err)
					return false
				}
			default:
				want := lowestModel(model, first, last)
				if po, ok := r.Offset(prefer); ok && po >= first && po <= last && !heldBy(model, po) {
					want = po
				}
				if err != nil || !l.New || l.Offset != want {
					t.Logf("step %d: id %s got %+v %v, want offset %d", step, id, l, err, want)
					return false
				}
				model[id] = l.Offset
			}
			// The pool is exactly the model.
			if len(pool) != len(model) {
				t.Logf("step %d: pool %v, model %v", step, pool, model)
				return false
			}
			for id, off := range model {
				if a, ok := pool[Key(off)]; !ok || a.ContainerID != id || off < first || off > last {
					t.Logf("step %d: pool %v, model %v", step, pool, model)
					return false
				}
			}
		}
		return true
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 2000}); err != nil {
		t.Fatal(err)
	}
}

func lowestModel(model map[string]uint64, first, last uint64) uint64 {
	for off := first; off <= last; off++ {
		if !heldBy(model, off) {
			return off
		}
	}
	return last + 1
}

func heldBy(model map[string]uint64, off uint64) bool {
	for _, o := range model {
		if o == off {
			return true
		}
	}
	return false
}

func TestParseMask(t *testing.T) {
	for in, want := range map[string]int{"255.255.0.0": 16, "255.255.255.252": 30, "0.0.0.0": 0, "255.255.255.255": 32} {
		if got, err := ParseMask(in); err != nil || got != want {
			t.Errorf("ParseMask(%s) = %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"255.0.255.0", "fd00::", "nope"} {
		if _, err := ParseMask(bad); err == nil {
			t.Errorf("ParseMask(%s) accepted", bad)
		}
	}
}

// Allocating the 50,001st address of a /16 with 50,000 held: the cost
// follows the allocations, not the range.
func BenchmarkAcquireLargePool(b *testing.B) {
	r := MustParseRange("10.100.0.0/16")
	pool := map[string]vmv1.IPAllocation{}
	for i := 1; i <= 50000; i++ {
		pool[Key(uint64(i))] = vmv1.IPAllocation{ContainerID: fmt.Sprint(i)}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Acquire(r, pool, "new", "", netip.Addr{}); err != nil {
			b.Fatal(err)
		}
		Release(pool, "new")
	}
}
