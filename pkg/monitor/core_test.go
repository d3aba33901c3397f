package monitor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor/cgroup"
	"github.com/vmscale/vmscale/pkg/monitor/filecache"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

type fakeCache struct {
	sizes []uint64
	err   error
}

func (f *fakeCache) Size(context.Context) (uint64, error) { return 0, f.err }
func (f *fakeCache) SetSize(_ context.Context, b uint64) (uint64, error) {
	if f.err != nil {
		return 0, f.err
	}
	f.sizes = append(f.sizes, b)
	return b, nil
}

// sampler hands out a fixed non-reclaimable amount.
type sampler struct{ bytes uint64 }

func (s *sampler) Read() (cgroup.MemoryStat, error) {
	return cgroup.MemoryStat{ActiveAnon: s.bytes}, nil
}

type coreFixture struct {
	core    *Core
	cache   *fakeCache
	sampler *sampler
	clock   *clocktesting.FakeClock
}

// newCore makes a Core on a 1 GiB guest with a fake cache and a watcher
// driven by hand (Sample), either part optional.
func newCore(t *testing.T, withCgroup, withCache bool) *coreFixture {
	f := &coreFixture{clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	f.core = &Core{
		CacheCfg: filecache.DefaultConfig(),
		MemTotal: func() (uint64, error) { return 1 * gib, nil },
		Clock:    f.clock,
		Log:      testLog(t),
		Metrics:  NewMetrics(nil),
	}
	if withCgroup {
		f.sampler = &sampler{}
		f.core.Watcher = cgroup.NewWatcher(f.sampler, f.clock, testLog(t))
		f.core.Watcher.OnSample = f.core.ObserveSample
	}
	if withCache {
		f.cache = &fakeCache{}
		f.core.Cache = f.cache
	}
	return f
}

// samples takes n samples of bytes, one per interval.
func (f *coreFixture) samples(n int, bytes uint64) {
	f.sampler.bytes = bytes
	for range n {
		f.clock.Step(pressure.SampleInterval)
		f.core.Watcher.Sample()
	}
}

func TestCoreNotManagingAnything(t *testing.T) {
	f := newCore(t, false, false)
	if err := f.core.Setup(t.Context()); err != nil {
		t.Fatal(err)
	}
	res, err := f.core.Downscale(t.Context(), api.Allocation{Cpu: 0.25, Mem: 0})
	if err != nil || res != (api.DownscaleResult{Ok: true, Status: "monitor is not managing cgroup or file cache"}) {
		t.Errorf("got %+v, %v", res, err)
	}
}

func TestCoreSetupSizesForMemTotal(t *testing.T) {
	f := newCore(t, true, true)
	if err := f.core.Setup(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(f.cache.sizes) != 1 || f.cache.sizes[0] != 698*mib {
		t.Errorf("cache sized %v, want 698 MiB for 1 GiB", f.cache.sizes)
	}
	if got := f.core.Watcher.Threshold(); got != pressure.Threshold(gib) {
		t.Errorf("threshold %d, want 0.85 GiB", got)
	}
	if got := testutil.ToFloat64(f.core.Metrics.MemoryThreshold); got != float64(pressure.Threshold(gib)) {
		t.Errorf("threshold metric %v", got)
	}

	// A cache that cannot be sized is not fatal.
	f = newCore(t, true, true)
	f.cache.err = errors.New("connection refused")
	if err := f.core.Setup(t.Context()); err != nil {
		t.Errorf("setup failed on a cache error: %v", err)
	}
	if got := testutil.ToFloat64(f.core.Metrics.FileCacheErrors); got != 2 {
		t.Errorf("cache errors %v, want 2 (read and set)", got)
	}
	// MemTotal unreadable is.
	f.core.MemTotal = func() (uint64, error) { return 0, errors.New("no /proc") }
	if err := f.core.Setup(t.Context()); err == nil {
		t.Error("setup succeeded without MemTotal")
	}
}

func TestCoreUpscale(t *testing.T) {
	f := newCore(t, true, true)
	if err := f.core.Upscale(t.Context(), api.Allocation{Cpu: 2, Mem: 4*gib + 100*mib}); err != nil {
		t.Fatal(err)
	}
	// usable = 4 GiB → cache 3072 MiB, threshold 0.85 × 4 GiB.
	if len(f.cache.sizes) != 1 || f.cache.sizes[0] != 3072*mib {
		t.Errorf("cache sized %v", f.cache.sizes)
	}
	if got := f.core.Watcher.Threshold(); got != pressure.Threshold(4*gib) {
		t.Errorf("threshold %d", got)
	}
	f.cache.err = errors.New("broken pipe")
	err := f.core.Upscale(t.Context(), api.Allocation{Cpu: 2, Mem: 8 * gib})
	if err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Errorf("upscale with a broken cache: %v", err)
	}
	if got := f.core.Watcher.Threshold(); got != pressure.Threshold(4*gib) {
		t.Errorf("threshold moved to %d though the upscale failed", got)
	}
}

func TestCoreDownscale(t *testing.T) {
	ctx := t.Context()
	f := newCore(t, true, true)
	target := api.Allocation{Cpu: 0.5, Mem: 2 * gib}

	// No samples yet: stale.
	if _, err := f.core.Downscale(ctx, target); !errors.Is(err, pressure.ErrStale) {
		t.Errorf("without samples: %v", err)
	}
	// One sample: not enough.
	f.samples(1, 100*mib)
	res, err := f.core.Downscale(ctx, target)
	if err != nil || res.Ok || res.Status != "haven't received enough cgroup memory stats yet" {
		t.Errorf("one sample: %+v, %v", res, err)
	}
	// usable = 1948 MiB, threshold 1655.8 MiB: 1600 MiB in use is too much.
	f.samples(5, 1600*mib)
	res, err = f.core.Downscale(ctx, target)
	if err != nil || res.Ok || !strings.HasPrefix(res.Status, "calculated memory threshold too low: ") {
		t.Errorf("too much in use: %+v, %v", res, err)
	}
	if len(f.cache.sizes) != 0 {
		t.Errorf("a denied downscale resized the cache: %v", f.cache.sizes)
	}
	// 1 GiB in use leaves room.
	f.samples(5, 1*gib)
	res, err = f.core.Downscale(ctx, target)
	// cache: min((1948-256)/1.1 = 1538, 1948 × 0.75 = 1461) MiB.
	want := "set file cache size to 1461 MiB; set cgroup memory threshold to 1.62 GiB"
	if err != nil || !res.Ok || res.Status != want {
		t.Errorf("room to spare: %+v, %v; want status %q", res, err, want)
	}
	if got := f.core.Watcher.Threshold(); got != pressure.Threshold(2*gib-100*mib) {
		t.Errorf("threshold %d after the downscale", got)
	}
	// Samples stop (memory.stat unreadable) for over 5 s: stale again.
	f.clock.Step(6 * time.Second)
	if _, err := f.core.Downscale(ctx, target); !errors.Is(err, pressure.ErrStale) {
		t.Errorf("after 6 s without samples: %v", err)
	}
	// A cache error fails the request rather than lying about it.
	f.samples(5, 0)
	f.cache.err = errors.New("permission denied")
	if _, err := f.core.Downscale(ctx, target); err == nil {
		t.Error("downscale succeeded with a broken cache")
	}

	// File cache only: always approved, the cache follows the target.
	f = newCore(t, false, true)
	res, err = f.core.Downscale(ctx, api.Allocation{Mem: 1*gib + 100*mib})
	if err != nil || !res.Ok || res.Status != "set file cache size to 698 MiB" {
		t.Errorf("cache only: %+v, %v", res, err)
	}
	// Cgroup only.
	f = newCore(t, true, false)
	f.samples(2, 0)
	res, err = f.core.Downscale(ctx, api.Allocation{Mem: 1*gib + 100*mib})
	if err != nil || !res.Ok || res.Status != "set cgroup memory threshold to 870.40 MiB" {
		t.Errorf("cgroup only: %+v, %v", res, err)
	}
}

func TestUsable(t *testing.T) {
	for mem, want := range map[uint64]uint64{0: 0, 50 * mib: 0, 100 * mib: 0, gib: gib - 100*mib} {
		if got := Usable(mem); got != want {
			t.Errorf("Usable(%d) = %d, want %d", mem, got, want)
		}
	}
}
