package filecache

import (
	"testing"
	"testing/quick"
)

const GiB = 1 << 30

// The worked examples in docs/protocols.md#vm-monitor.
func TestSizeWorkedExamples(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		total, want uint64
	}{
		{1 * GiB, 698 * MiB},  // min(768/1.1 = 698.2, 768)
		{4 * GiB, 3072 * MiB}, // min(3840/1.1 = 3490.9, 3072)
		{256 * MiB, 0},        // nothing left after 256 MiB
		{0, 0},
		{256*MiB + 1, 0},       // under a MiB left: rounded down
		{2 * GiB, 1536 * MiB},  // min(1792/1.1 = 1629.1, 1536)
		{512 * MiB, 232 * MiB}, // min(256/1.1 = 232.7, 384)
	} {
		if got := c.Size(e.total); got != e.want {
			t.Errorf("Size(%d MiB) = %d MiB, want %d MiB", e.total/MiB, got/MiB, e.want/MiB)
		}
	}
}

// The cache never takes more than the multiplier allows, never leaves less
// than MinRemainingAfterCache, is whole MiB, and grows with memory.
func TestSizeProperties(t *testing.T) {
	c := DefaultConfig()
	prop := func(total, more uint64) bool {
		total %= 1 << 50
		more %= 1 << 40
		s := c.Size(total)
		return s%MiB == 0 &&
			float64(s) <= float64(total)*c.ResourceMultiplier &&
			(s == 0 || s+c.MinRemainingAfterCache <= total) &&
			c.Size(total+more) >= s
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 5000}); err != nil {
		t.Error(err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{ResourceMultiplier: 0, SpreadFactor: 0.1},
		{ResourceMultiplier: 1, SpreadFactor: 0},
		{ResourceMultiplier: 0.75, SpreadFactor: -0.1},
		{ResourceMultiplier: 0.95, SpreadFactor: 0.1}, // 1.045
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v is valid", c)
		}
	}
}
