package cgroup

import (
	"context"
	"log/slog"
	"sync"

	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/monitor/pressure"
)

// Sampler reads memory.stat; *Reader is the real one.
type Sampler interface {
	Read() (MemoryStat, error)
}

// Watcher samples a cgroup every pressure.SampleInterval and feeds a
// pressure.Tracker; its upscale decisions come out of Requests.
type Watcher struct {
	sampler Sampler
	clock   clock.WithTicker
	log     *slog.Logger

	// OnSample, when set, is called after every sample (for metrics).
	OnSample func(s pressure.Stats, threshold uint64, err error)

	mu       sync.Mutex
	tracker  pressure.Tracker
	failing  bool
	requests chan pressure.Request
}

// NewWatcher makes a watcher; Run starts it.
func NewWatcher(s Sampler, clk clock.WithTicker, log *slog.Logger) *Watcher {
	return &Watcher{sampler: s, clock: clk, log: log, requests: make(chan pressure.Request, 1)}
}

// Run samples until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := w.clock.NewTicker(pressure.SampleInterval)
	defer t.Stop()
	w.Sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			w.Sample()
		}
	}
}

// Sample takes one sample now. A failed read is logged once per run of
// failures and leaves the window as it was, so the stats go stale.
func (w *Watcher) Sample() {
	m, err := w.sampler.Read()
	now := w.clock.Now()
	w.mu.Lock()
	var req pressure.Request
	var want bool
	if err == nil {
		req, want = w.tracker.Observe(now, m.NonReclaimable())
	}
	s, threshold := w.tracker.Stats(), w.tracker.Threshold()
	wasFailing := w.failing
	w.failing = err != nil
	w.mu.Unlock()

	switch {
	case err != nil && !wasFailing:
		w.log.Error("cannot read cgroup memory stats; retrying every sample", "err", err)
	case err == nil && wasFailing:
		w.log.Info("cgroup memory stats readable again")
	}
	if w.OnSample != nil {
		w.OnSample(s, threshold, err)
	}
	if want {
		level := slog.LevelDebug // repeats, once a second while the pressure lasts
		if !req.CrossedAt.IsZero() {
			level = slog.LevelInfo
		}
		w.log.Log(context.Background(), level, "memory use is at the threshold; asking for an upscale",
			"avgNonReclaimable", s.Avg, "threshold", threshold)
		select {
		case w.requests <- req:
		default: // one is already waiting to be sent
		}
	}
}

// Requests delivers the decisions to ask for an upscale.
func (w *Watcher) Requests() <-chan pressure.Request { return w.requests }

// Stats is the current sample window.
func (w *Watcher) Stats() pressure.Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tracker.Stats()
}

// SetThreshold sets the memory use that triggers an upscale.
func (w *Watcher) SetThreshold(bytes uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tracker.SetThreshold(bytes)
}

// Threshold is the current threshold.
func (w *Watcher) Threshold() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tracker.Threshold()
}

// DropPending discards an upscale decision nobody took, e.g. one made
// while no agent was connected.
func (w *Watcher) DropPending() {
	select {
	case <-w.requests:
	default:
	}
}
