// Package pressure is the vm-monitor's memory decisions as pure functions
// of samples and times (no I/O, no clock of its own): the average of the
// last samples of non-reclaimable memory, when to ask for an upscale (at the
// threshold, at most once a second), and whether a downscale leaves enough
// room. Package cgroup feeds it samples from memory.stat.
package pressure

import (
	"errors"
	"fmt"
	"time"
)

// The numbers of Neon's monitor (docs/protocols.md#vm-monitor).
const (
	// SampleInterval is how often memory.stat is read.
	SampleInterval = 100 * time.Millisecond
	// Window is how many of the latest samples are averaged.
	Window = 5
	// MinRequestGap is the least time between two UpscaleRequests.
	MinRequestGap = time.Second
	// StaleAfter is how old the latest sample may be when a downscale is
	// decided; older means the sampling is broken.
	StaleAfter = 5 * time.Second
	// ThresholdFraction of usable memory is where upscaling starts: the
	// other 15 % is overhead the cgroup needs besides its anonymous memory.
	ThresholdFraction = 0.85
	// DownscaleBuffer must remain between current use and the threshold
	// after a downscale.
	DownscaleBuffer = 100 << 20
)

// Threshold is the memory use that triggers an upscale for usable bytes.
func Threshold(usable uint64) uint64 { return uint64(float64(usable) * ThresholdFraction) }

// Stats summarises the recent samples.
type Stats struct {
	Avg        uint64    // average non-reclaimable bytes over the window
	Count      int       // samples in the window, at most Window
	LastSample time.Time // when the latest sample was taken (zero: never)
}

// Tracker is the watcher's state: the sample window, the threshold and when
// the last upscale was asked for. It does no I/O and reads no clock; the
// zero value has no threshold and never asks for an upscale.
type Tracker struct {
	window    [Window]uint64
	count     int
	next      int
	last      time.Time
	threshold uint64

	lastRequest time.Time
	crossedAt   time.Time // first sample at or above the threshold in this episode
	requested   bool      // a request was made in this episode
}

// Request is a decision to send an UpscaleRequest.
type Request struct {
	// CrossedAt is when a sample first reached the threshold, set on the
	// first request of an episode of pressure (zero on repeats), so the
	// latency from crossing to sending can be measured.
	CrossedAt time.Time
}

// Observe records a sample of non-reclaimable bytes taken at now and says
// whether to ask for an upscale: the window's average is at or above the
// threshold and no request was made in the last MinRequestGap.
func (t *Tracker) Observe(now time.Time, nonReclaimable uint64) (Request, bool) {
	t.window[t.next] = nonReclaimable
	t.next = (t.next + 1) % Window
	t.count = min(t.count+1, Window)
	t.last = now

	if t.threshold == 0 {
		return Request{}, false
	}
	if nonReclaimable >= t.threshold {
		if t.crossedAt.IsZero() {
			t.crossedAt = now
		}
	} else if t.average() < t.threshold {
		t.crossedAt, t.requested = time.Time{}, false
	}
	if t.average() < t.threshold {
		return Request{}, false
	}
	if !t.lastRequest.IsZero() && now.Sub(t.lastRequest) < MinRequestGap {
		return Request{}, false
	}
	t.lastRequest = now
	r := Request{}
	if !t.requested {
		r.CrossedAt = t.crossedAt
		if r.CrossedAt.IsZero() { // the average got there with no single sample above
			r.CrossedAt = now
		}
		t.requested = true
	}
	return r, true
}

func (t *Tracker) average() uint64 {
	if t.count == 0 {
		return 0
	}
	var sum uint64
	for i := range t.count {
		sum += t.window[i]
	}
	return sum / uint64(t.count)
}

// Stats is the current window.
func (t *Tracker) Stats() Stats {
	return Stats{Avg: t.average(), Count: t.count, LastSample: t.last}
}

// SetThreshold sets the memory use at which an upscale is asked for.
func (t *Tracker) SetThreshold(bytes uint64) { t.threshold = bytes }

// Threshold is the current threshold.
func (t *Tracker) Threshold() uint64 { return t.threshold }

// ErrStale is returned when the latest sample is too old to decide on.
var ErrStale = errors.New("cgroup memory stats are stale")

// DownscaleVerdict is whether shrinking to a usable amount leaves the
// cgroup enough room, and the threshold that goes with it.
type DownscaleVerdict struct {
	Ok        bool
	Reason    string // why not, when !Ok
	Threshold uint64 // the new threshold, when Ok
}

// DecideDownscale applies the downscale rule to usable bytes (the target
// memory minus the system's share): with fresh stats from more than one
// sample, the new threshold must stay DownscaleBuffer above the average use.
func DecideDownscale(now time.Time, s Stats, usable uint64) (DownscaleVerdict, error) {
	if s.LastSample.IsZero() || now.Sub(s.LastSample) > StaleAfter {
		age := "never sampled"
		if !s.LastSample.IsZero() {
			age = fmt.Sprintf("last update %s ago", now.Sub(s.LastSample).Round(time.Millisecond))
		}
		return DownscaleVerdict{}, fmt.Errorf("%w (%s)", ErrStale, age)
	}
	if s.Count <= 1 {
		return DownscaleVerdict{Reason: "haven't received enough cgroup memory stats yet"}, nil
	}
	threshold := Threshold(usable)
	if threshold < s.Avg+DownscaleBuffer {
		return DownscaleVerdict{Reason: fmt.Sprintf(
			"calculated memory threshold too low: %s < %s (current usage) + %s (buffer)",
			FormatBytes(threshold), FormatBytes(s.Avg), FormatBytes(DownscaleBuffer))}, nil
	}
	return DownscaleVerdict{Ok: true, Threshold: threshold}, nil
}

// FormatBytes writes a size for people: "781.00 MiB", "1.02 GiB".
func FormatBytes(b uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(b), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", b)
	}
	return fmt.Sprintf("%.2f %s", v, units[i])
}
