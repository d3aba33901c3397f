package core

import "time"

// FailureRate counts a peer's failed requests over a sliding interval, to
// flag a VM as stuck when they pass a threshold (maxFailedRequestRate).
type FailureRate struct {
	Interval  time.Duration
	Threshold int
	times     []time.Time
}

// Record notes a failure at now.
func (f *FailureRate) Record(now time.Time) {
	f.prune(now)
	f.times = append(f.times, now)
}

// Stuck reports whether more than Threshold failures fall within Interval
// before now.
func (f *FailureRate) Stuck(now time.Time) bool {
	f.prune(now)
	return f.Threshold > 0 && len(f.times) > f.Threshold
}

func (f *FailureRate) prune(now time.Time) {
	cut := now.Add(-f.Interval)
	i := 0
	for i < len(f.times) && !f.times[i].After(cut) {
		i++
	}
	if i > 0 {
		f.times = append(f.times[:0], f.times[i:]...)
	}
}
