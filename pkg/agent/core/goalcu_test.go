package core

import (
	"math"
	"testing"

	"github.com/vmscale/vmscale/pkg/api"
)

const (
	mib = api.Bytes(1 << 20)
	gib = api.Bytes(1 << 30)
)

var cu = api.Resources{VCPU: 250, Mem: gib}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }

func TestCPUGoalCU(t *testing.T) {
	def := api.DefaultScalingConfig()
	zoned := def
	zoned.CPUStableZoneRatio, zoned.CPUMixedZoneRatio = ptr(0.25), ptr(0.5)
	tests := []struct {
		name         string
		cfg          api.ScalingConfig
		load1, load5 float64
		want         float64
	}{
		// Default ratios of 0: in effect load1 / 0.9 / 0.25.
		{"default uses load1", def, 0.9, 0.1, 4},
		{"default idle", def, 0, 0, 0},
		{"default load below 5m", def, 0.45, 2, 2},
		// |d| = 0.1 <= stable 0.25: all load5.
		{"stable zone uses load5", zoned, 1.1, 1.0, 1.0 / 0.9 / 0.25},
		// |d| = 1 >= mixed 0.75: all load1.
		{"beyond mixed zone uses load1", zoned, 2.0, 1.0, 2.0 / 0.9 / 0.25},
		// |d| = 0.5: w = (0.5-0.25)/(0.5+1e-6).
		{"mixed zone blends", zoned, 1.5, 1.0, func() float64 {
			w := 0.25 / (0.5 + 1e-6)
			return (w*1.5 + (1-w)*1.0) / 0.9 / 0.25
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := CPUGoalCU(tc.cfg, cu, SystemMetrics{Load1: tc.load1, Load5: tc.load5})
			if !near(got, tc.want) {
				t.Fatalf("CPUGoalCU = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMemGoalCU(t *testing.T) {
	cfg := api.DefaultScalingConfig()
	m := SystemMetrics{MemTotal: float64(4 * gib), MemAvailable: float64(4*gib - 668*mib), MemCached: float64(512 * mib)}
	// usage = 668 MiB + 100 MiB = 768 MiB; / 0.75 = 1 GiB = 1 CU.
	if got := MemGoalCU(cfg, cu, m, nil); !near(got, 1) {
		t.Fatalf("no working set: %v, want 1", got)
	}
	// With a 2 GiB working set, capped at the 512 MiB cache:
	// (512 + 768) MiB / 0.9 / 1 GiB.
	wss := float64(2 * gib)
	want := float64(1280*mib) / 0.9 / float64(gib)
	if got := MemGoalCU(cfg, cu, m, &wss); !near(got, want) {
		t.Fatalf("working set: %v, want %v", got, want)
	}
	// A small working set does not lower the usage goal.
	small := float64(mib)
	if got := MemGoalCU(cfg, cu, m, &small); !near(got, 1) {
		t.Fatalf("small working set: %v, want 1", got)
	}
}

func TestLFCWorkingSet(t *testing.T) {
	cfg := api.DefaultScalingConfig() // window 5, min wait 5: off = 4
	tests := []struct {
		name    string
		largest bool
		s       []float64
		ok      bool
		pages   float64
	}{
		{"too few windows", false, []float64{1, 2, 3, 4, 5, 6, 7, 8}, false, 0},
		// Flat: estimate = last = 100; the prefix is all of it (each <=
		// 100); no growth, so the projection is 100.
		{"flat", false, rep(100, 10), true, 100},
		// Linear growth 10/min from 10: no t has d1 > 3*d0, so the estimate
		// is the last (100) and the whole series is used; each step grows
		// by 10, the last projection is 100 + 5.
		{"steady growth", false, ramp(10, 10, 10), true, 105},
		// A knee: flat at 50 for the first 6 minutes, then a jump. At t=4,
		// d0 = 0 and d1 = s[8]-s[4] > 0, so the estimate is s[4] = 50; the
		// prefix stops at the jump and the projection stays 50.
		{"knee picks the plateau", false, []float64{50, 50, 50, 50, 50, 50, 400, 400, 400, 400}, true, 50},
		{"largest window takes the last", true, []float64{50, 50, 50, 50, 50, 50, 400, 400, 400, 400}, true, 400 + 0.5*350},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.LFCUseLargestWindow = ptr(tc.largest)
			got, ok := LFCWorkingSetBytes(c, tc.s)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if ok && !near(got, tc.pages*8192) {
				t.Fatalf("working set = %v pages, want %v", got/8192, tc.pages)
			}
		})
	}
}

func rep(v float64, n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func ramp(start, step float64, n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = start + step*float64(i)
	}
	return s
}

func TestGoalCU(t *testing.T) {
	cfg := api.DefaultScalingConfig()
	lfcOn := cfg
	lfcOn.EnableLFCMetrics = ptr(true)
	idleMem := SystemMetrics{MemTotal: float64(4 * gib), MemAvailable: float64(4 * gib), MemCached: float64(3 * gib)}
	tests := []struct {
		name string
		cfg  api.ScalingConfig
		sys  *SystemMetrics
		lfc  *LFCMetrics
		want uint32
	}{
		{"no metrics", cfg, nil, nil, 0},
		// load 0.9 -> 4 CU from CPU; memory (100 MiB / 0.75) -> 0.13 CU.
		{"cpu dominates", cfg, &SystemMetrics{Load1: 0.9, MemTotal: float64(4 * gib), MemAvailable: float64(4 * gib)}, nil, 4},
		// The CPU part is rounded, not ceiled: 4.4 -> 4.
		{"cpu part rounds", cfg, &SystemMetrics{Load1: 0.99, MemTotal: float64(4 * gib), MemAvailable: float64(4 * gib)}, nil, 4},
		// 2.9 GiB used + 100 MiB = 3 GiB / 0.75 = 4 CU.
		{"memory dominates", cfg, &SystemMetrics{MemTotal: float64(8 * gib), MemAvailable: float64(8*gib - 3*gib + 100*mib)}, nil, 4},
		// 1.1 CU of memory -> 2.
		{"memory part ceils", cfg, &SystemMetrics{MemTotal: float64(8 * gib), MemAvailable: float64(8*gib - 825*mib)}, nil, 2},
		// Flat working set of 3 GiB in pages: LFC = 3 GiB / 0.75 = 4 CU;
		// memory with the working set capped at the 3 GiB cache:
		// (3 GiB + 100 MiB)/0.9 -> 3.44 CU.
		{"lfc dominates", lfcOn, &idleMem, &LFCMetrics{WSSPages: rep(float64(3*gib/8192), 10)}, 4},
		{"lfc ignored when disabled", cfg, &idleMem, &LFCMetrics{WSSPages: rep(float64(3*gib/8192), 10)}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, parts := GoalCU(tc.cfg, cu, tc.sys, tc.lfc)
			if got != tc.want {
				t.Fatalf("GoalCU = %d (parts %+v), want %d", got, parts, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
