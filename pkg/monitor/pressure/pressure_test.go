package pressure

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const mib = 1 << 20

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestTrackerAveragesTheLastFiveSamples(t *testing.T) {
	var tr Tracker
	for i, v := range []uint64{10, 20, 30} {
		tr.Observe(at(100*i), v*mib)
	}
	if s := tr.Stats(); s.Avg != 20*mib || s.Count != 3 || !s.LastSample.Equal(at(200)) {
		t.Fatalf("after 3 samples: %+v", s)
	}
	for i, v := range []uint64{40, 50, 60, 70} {
		tr.Observe(at(300+100*i), v*mib)
	}
	// The window now holds 30..70: the oldest two are gone.
	if s := tr.Stats(); s.Avg != 50*mib || s.Count != Window {
		t.Fatalf("after 7 samples: %+v, want avg 50 MiB over %d", s, Window)
	}
}

func TestTrackerAsksWhenTheAverageReachesTheThreshold(t *testing.T) {
	var tr Tracker
	if _, ok := tr.Observe(at(0), 1<<40); ok {
		t.Fatal("asked for an upscale with no threshold set")
	}
	tr = Tracker{}
	tr.SetThreshold(100 * mib)
	samples := []struct {
		ms   int
		v    uint64
		want bool
	}{
		{0, 50, false},    // avg 50
		{100, 50, false},  // avg 50
		{200, 200, false}, // crosses: avg 100 - at the threshold counts
	}
	samples[2].want = true
	for _, s := range samples {
		r, ok := tr.Observe(at(s.ms), s.v*mib)
		if ok != s.want {
			t.Fatalf("at %d ms (sample %d MiB, avg %d MiB): asked=%v, want %v", s.ms, s.v, tr.Stats().Avg/mib, ok, s.want)
		}
		if ok && !r.CrossedAt.Equal(at(200)) {
			t.Errorf("crossed at %v, want the 200 ms sample", r.CrossedAt)
		}
	}
}

func TestTrackerRateLimitsToOnePerSecond(t *testing.T) {
	var tr Tracker
	tr.SetThreshold(100 * mib)
	var asked []int
	var crossed []time.Time
	for ms := 0; ms <= 3000; ms += 100 {
		if r, ok := tr.Observe(at(ms), 500*mib); ok {
			asked = append(asked, ms)
			crossed = append(crossed, r.CrossedAt)
		}
	}
	want := []int{0, 1000, 2000, 3000}
	if len(asked) != len(want) {
		t.Fatalf("asked at %v ms, want %v", asked, want)
	}
	for i := range want {
		if asked[i] != want[i] {
			t.Fatalf("asked at %v ms, want %v", asked, want)
		}
	}
	// Only the first request of an episode carries the crossing time.
	if !crossed[0].Equal(at(0)) || !crossed[1].IsZero() {
		t.Errorf("crossing times %v", crossed)
	}
	// Pressure gone, then back: a new episode with a fresh crossing time.
	for ms := 3100; ms < 4000; ms += 100 {
		tr.Observe(at(ms), 0)
	}
	r, ok := tr.Observe(at(4000), 1000*mib) // avg (0*4 + 1000)/5 = 200 MiB
	if !ok || !r.CrossedAt.Equal(at(4000)) {
		t.Errorf("new episode: asked=%v crossed=%v", ok, r.CrossedAt)
	}
}

func TestTrackerThresholdChangeEndsPressure(t *testing.T) {
	var tr Tracker
	tr.SetThreshold(100 * mib)
	if _, ok := tr.Observe(at(0), 150*mib); !ok {
		t.Fatal("no request above the threshold")
	}
	tr.SetThreshold(Threshold(1024 * mib)) // the upscale arrived
	for ms := 100; ms <= 2000; ms += 100 {
		if _, ok := tr.Observe(at(ms), 150*mib); ok {
			t.Fatalf("asked again at %d ms below the new threshold", ms)
		}
	}
}

func TestThreshold(t *testing.T) {
	if got, want := Threshold(1000*mib), uint64(850*mib); got != want {
		t.Errorf("Threshold(1000 MiB) = %d, want %d", got, want)
	}
}

func TestDecideDownscale(t *testing.T) {
	now := at(10_000)
	fresh := func(avg uint64, count int) Stats { return Stats{Avg: avg, Count: count, LastSample: at(9_900)} }
	usable := uint64(2048-100) * mib // a 2 GiB target
	for _, c := range []struct {
		name      string
		stats     Stats
		usable    uint64
		ok        bool
		reason    string
		stale     bool
		threshold uint64
	}{
		{name: "never sampled", stats: Stats{}, usable: usable, stale: true},
		{name: "stale", stats: Stats{Avg: 1, Count: 5, LastSample: at(4_000)}, usable: usable, stale: true},
		{name: "5 s old is still fresh", stats: Stats{Avg: 0, Count: 5, LastSample: at(5_000)}, usable: usable, ok: true, threshold: Threshold(usable)},
		{name: "one sample", stats: fresh(0, 1), usable: usable, reason: "haven't received enough cgroup memory stats yet"},
		{name: "too low", stats: fresh(1600*mib, 5), usable: usable, reason: "calculated memory threshold too low: 1.62 GiB < 1.56 GiB (current usage) + 100.00 MiB (buffer)"},
		// threshold = 0.85 × 1948 MiB = 1655.8 MiB; the buffer needs avg ≤ 1555.8 MiB.
		{name: "just enough", stats: fresh(1555*mib, 5), usable: usable, ok: true, threshold: Threshold(usable)},
		{name: "just short", stats: fresh(1556*mib, 5), usable: usable},
		{name: "target below the system share", stats: fresh(0, 5), usable: 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := DecideDownscale(now, c.stats, c.usable)
			if c.stale {
				if !errors.Is(err, ErrStale) {
					t.Fatalf("got %+v, %v; want ErrStale", v, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.Ok != c.ok || (c.reason != "" && v.Reason != c.reason) || v.Threshold != c.threshold {
				t.Errorf("got %+v, want ok=%v reason=%q threshold=%d", v, c.ok, c.reason, c.threshold)
			}
			if !v.Ok && !strings.Contains(v.Reason, "memory") {
				t.Errorf("denied without a reason: %+v", v)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for b, want := range map[uint64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.00 KiB", 781 * mib: "781.00 MiB", 1095216660: "1.02 GiB",
	} {
		if got := FormatBytes(b); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", b, got, want)
		}
	}
}
