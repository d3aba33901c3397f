package core

import (
	"math"

	"github.com/vmscale/vmscale/pkg/api"
)

// SystemMetrics are the guest's load and memory as its exporter (:9100)
// reports them. Memory is in bytes.
type SystemMetrics struct {
	Load1, Load5 float64
	MemTotal     float64
	MemAvailable float64
	MemCached    float64
}

// LFCMetrics are Postgres's file-cache working-set estimates: WSSPages[i]
// is the working set, in 8 KiB pages, over the last i+1 minutes.
type LFCMetrics struct {
	WSSPages []float64
}

// lfcPageBytes is the size of one page of the working-set metric.
const lfcPageBytes = 8192

// memSystemReserve is added to the guest's measured memory use: what the
// kernel and the guest's daemons need beyond what MemAvailable shows.
const memSystemReserve = 100 << 20

// GoalParts are the per-resource goals in compute units, before rounding;
// a part without its metrics is zero.
type GoalParts struct {
	CPU, Mem, LFC float64
}

// CPUGoalCU is the CPU part of the goal: the load, blended between the 1-
// and 5-minute averages by how far apart they are, over the target fraction,
// in compute units.
func CPUGoalCU(cfg api.ScalingConfig, cu api.Resources, m SystemMetrics) float64 {
	stable := *cfg.CPUStableZoneRatio * m.Load5
	mixed := stable + *cfg.CPUMixedZoneRatio*m.Load5
	d := math.Abs(m.Load1 - m.Load5)
	var w float64
	switch {
	case d <= stable:
		w = 0
	case d >= mixed:
		w = 1
	default:
		w = (d - stable) / (mixed - stable + 1e-6)
	}
	load := w*m.Load1 + (1-w)*m.Load5
	return load / *cfg.LoadAverageFractionTarget / cu.VCPU.AsFloat64()
}

// MemUsageBytes is the guest's memory in use plus the system reserve.
func MemUsageBytes(m SystemMetrics) float64 {
	return m.MemTotal - m.MemAvailable + memSystemReserve
}

// MemGoalCU is the memory part of the goal: usage over the usage target;
// with a known working set, also working set (at most the page cache) plus
// usage over the total target.
func MemGoalCU(cfg api.ScalingConfig, cu api.Resources, m SystemMetrics, wssBytes *float64) float64 {
	usage := MemUsageBytes(m)
	goal := math.Round(usage / *cfg.MemoryUsageFractionTarget) / float64(cu.Mem)
	if wssBytes != nil {
		total := (math.Min(*wssBytes, m.MemCached) + usage) / *cfg.MemoryTotalFractionTarget / float64(cu.Mem)
		goal = math.Max(goal, total)
	}
	return goal
}

// LFCWorkingSetBytes estimates the working set from the per-minute windows,
// projected for growth. ok is false when there are too few windows yet.
func LFCWorkingSetBytes(cfg api.ScalingConfig, s []float64) (bytes float64, ok bool) {
	off := *cfg.LFCMinWaitBeforeDownscaleMinutes - 1
	w := *cfg.LFCWindowSizeMinutes
	if off < 0 || w < 1 || len(s) < off+w || len(s) == 0 {
		return 0, false
	}
	estimate := s[len(s)-1]
	if !*cfg.LFCUseLargestWindow {
		for t := off; t < len(s)-w+1; t++ {
			if t-w+1 < 0 {
				continue
			}
			d0 := max(0, s[t]-s[t-w+1])
			d1 := max(0, s[t+w-1]-s[t])
			if d1 > 3*d0 {
				estimate = s[t]
				break
			}
		}
	}
	e := off
	for e < len(s) && s[e] <= estimate {
		e++
	}
	best := s[0]
	x0 := s[0]
	for i := 0; i < e; i++ {
		x1 := max(x0, s[i])
		best = max(best, x1+0.5*(x1-x0))
		x0 = x1
	}
	return best * lfcPageBytes, true
}

// LFCGoalCU is the file-cache part of the goal.
func LFCGoalCU(cfg api.ScalingConfig, cu api.Resources, wssBytes float64) float64 {
	return wssBytes / *cfg.LFCToMemoryRatio / float64(cu.Mem)
}

// GoalCU is the number of compute units the VM should have by its metrics:
// ceil(max(round(cpu), mem, lfc)). Either argument may be nil; missing parts
// count as zero.
func GoalCU(cfg api.ScalingConfig, cu api.Resources, sys *SystemMetrics, lfc *LFCMetrics) (uint32, GoalParts) {
	return goalCU(cfg, cu, sys, workingSet(cfg, lfc))
}

// workingSet is the LFC working set in bytes, nil when LFC metrics are off
// or too short.
func workingSet(cfg api.ScalingConfig, lfc *LFCMetrics) *float64 {
	if lfc == nil || !*cfg.EnableLFCMetrics {
		return nil
	}
	if b, ok := LFCWorkingSetBytes(cfg, lfc.WSSPages); ok {
		return &b
	}
	return nil
}

func goalCU(cfg api.ScalingConfig, cu api.Resources, sys *SystemMetrics, wss *float64) (uint32, GoalParts) {
	var parts GoalParts
	if wss != nil {
		parts.LFC = LFCGoalCU(cfg, cu, *wss)
	}
	if sys != nil {
		parts.CPU = CPUGoalCU(cfg, cu, *sys)
		parts.Mem = MemGoalCU(cfg, cu, *sys, wss)
	}
	g := max(math.Round(parts.CPU), parts.Mem, parts.LFC)
	if g <= 0 || math.IsNaN(g) {
		return 0, parts
	}
	if g > math.MaxUint32 {
		return math.MaxUint32, parts
	}
	return uint32(math.Ceil(g)), parts
}
