package wakegrid

import (
	"testing"
	"time"
)

func TestGrid(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	g := 250 * time.Millisecond
	for _, tc := range []struct {
		in, want time.Duration
	}{{0, 0}, {1, g}, {g, g}, {g + 1, 2 * g}, {999 * time.Millisecond, time.Second}} {
		if got := On(base.Add(tc.in), g); !got.Equal(base.Add(tc.want)) {
			t.Errorf("On(+%s) = +%s, want +%s", tc.in, got.Sub(base), tc.want)
		}
	}
	// A schedule on the grid stays on it, period after period.
	next := base
	now := base.Add(30 * time.Millisecond) // the work took 30 ms
	for i := 1; i <= 3; i++ {
		next = Next(next, now, 5*time.Second, g)
		if want := base.Add(time.Duration(i) * 5 * time.Second); !next.Equal(want) {
			t.Fatalf("cycle %d: next +%s, want +%s", i, next.Sub(base), want.Sub(base))
		}
		now = next.Add(30 * time.Millisecond)
	}
	// Work that overran the period resumes at the next grid instant.
	if got := Next(base, base.Add(6*time.Second+10*time.Millisecond), 5*time.Second, g); !got.Equal(base.Add(6*time.Second + g)) {
		t.Fatalf("after an overrun: +%s", got.Sub(base))
	}
}
