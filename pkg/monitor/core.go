package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor/cgroup"
	"github.com/vmscale/vmscale/pkg/monitor/filecache"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
)

// SysBuffer is the memory kept for the guest's own system (kernel, init,
// daemons) out of what the agent grants.
const SysBuffer = 100 << 20

// Usable is the memory left for Postgres out of mem: mem − SysBuffer, or 0.
func Usable(mem uint64) uint64 {
	if mem < SysBuffer {
		return 0
	}
	return mem - SysBuffer
}

// FileCache is where the cache size goes (*filecache.Postgres).
type FileCache interface {
	Size(ctx context.Context) (uint64, error)
	SetSize(ctx context.Context, bytes uint64) (uint64, error)
}

// Core is what the monitor manages, either part optional: the cgroup
// watcher (--cgroup) and the file cache (--pgconnstr). It answers the
// agent's requests; Server carries them.
type Core struct {
	Watcher  *cgroup.Watcher // nil: no cgroup
	Cache    FileCache       // nil: no file cache
	CacheCfg filecache.Config
	MemTotal func() (uint64, error) // the guest's MemTotal in bytes
	Clock    clock.PassiveClock
	Log      *slog.Logger
	Metrics  *Metrics
}

// Setup runs when an agent connects: the memory is the guest's MemTotal;
// the cache is sized for it and the threshold set from it. A cache that
// cannot be sized is logged, not fatal: the cgroup side still works.
func (c *Core) Setup(ctx context.Context) error {
	mem, err := c.MemTotal()
	if err != nil {
		return fmt.Errorf("read the guest's memory: %w", err)
	}
	if c.Cache != nil {
		if cur, err := c.Cache.Size(ctx); err != nil {
			c.cacheFailed("cannot read the cache size", err)
		} else {
			c.Log.Info("cache size before setup", "bytes", cur)
		}
		if _, err := c.setCache(ctx, mem); err != nil {
			c.cacheFailed("cannot size the cache for the guest's memory; keeping the old size", err)
		}
	}
	if c.Watcher != nil {
		c.setThreshold(pressure.Threshold(mem))
	}
	c.Log.Info("agent session set up", "memTotal", mem, "cgroup", c.Watcher != nil, "fileCache", c.Cache != nil)
	return nil
}

// Upscale applies more memory: the cache grows, then the threshold.
func (c *Core) Upscale(ctx context.Context, granted api.Allocation) error {
	usable := Usable(granted.Mem)
	if c.Cache != nil {
		if _, err := c.setCache(ctx, usable); err != nil {
			c.Metrics.FileCacheErrors.Inc()
			return fmt.Errorf("failed to set file cache size: %w", err)
		}
	}
	if c.Watcher != nil {
		c.setThreshold(pressure.Threshold(usable))
	}
	c.Log.Info("upscaled", "cpu", granted.Cpu, "mem", granted.Mem, "usable", usable)
	return nil
}

// Downscale decides whether the VM may shrink to target and, if so, shrinks
// the cache and lowers the threshold before saying yes. The CPU part of the
// target is not the monitor's concern.
func (c *Core) Downscale(ctx context.Context, target api.Allocation) (api.DownscaleResult, error) {
	if c.Watcher == nil && c.Cache == nil {
		return api.DownscaleResult{Ok: true, Status: "monitor is not managing cgroup or file cache"}, nil
	}
	usable := Usable(target.Mem)
	var threshold uint64
	if c.Watcher != nil {
		v, err := pressure.DecideDownscale(c.Clock.Now(), c.Watcher.Stats(), usable)
		if err != nil {
			return api.DownscaleResult{}, err
		}
		if !v.Ok {
			return api.DownscaleResult{Ok: false, Status: v.Reason}, nil
		}
		threshold = v.Threshold
	}
	var steps []string
	if c.Cache != nil {
		applied, err := c.setCache(ctx, usable)
		if err != nil {
			c.Metrics.FileCacheErrors.Inc()
			return api.DownscaleResult{}, fmt.Errorf("failed to set file cache size: %w", err)
		}
		steps = append(steps, fmt.Sprintf("set file cache size to %d MiB", applied/filecache.MiB))
	}
	if c.Watcher != nil {
		c.setThreshold(threshold)
		steps = append(steps, "set cgroup memory threshold to "+pressure.FormatBytes(threshold))
	}
	return api.DownscaleResult{Ok: true, Status: strings.Join(steps, "; ")}, nil
}

func (c *Core) setCache(ctx context.Context, mem uint64) (uint64, error) {
	applied, err := c.Cache.SetSize(ctx, c.CacheCfg.Size(mem))
	if err != nil {
		return 0, err
	}
	c.Metrics.FileCacheSize.Set(float64(applied))
	c.Log.Info("sized the cache", "forMemory", mem, "bytes", applied)
	return applied, nil
}

func (c *Core) cacheFailed(what string, err error) {
	c.Metrics.FileCacheErrors.Inc()
	c.Log.Warn(what, "err", err)
}

func (c *Core) setThreshold(bytes uint64) {
	c.Watcher.SetThreshold(bytes)
	c.Metrics.MemoryThreshold.Set(float64(bytes))
	c.Log.Info("set the cgroup memory threshold", "bytes", bytes)
}

// ObserveSample feeds the watcher's samples into the metrics; set it as
// the watcher's OnSample.
func (c *Core) ObserveSample(s pressure.Stats, _ uint64, err error) {
	if err != nil {
		c.Metrics.CgroupReadErrors.Inc()
		return
	}
	c.Metrics.MemoryNonReclaimable.Set(float64(s.Avg))
}
