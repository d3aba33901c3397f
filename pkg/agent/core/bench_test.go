package core

import (
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

// The decision cost for one VM at a fixed clock (issue 10's benchmark;
// figures in docs/benchmarks.md#autoscaler-agent). Comparing with Neon's
// agent needs its core measured in the same run, which no benchmark here does.
func benchState(b *testing.B, lfc bool) *State {
	m := newMachine(&testing.T{})
	if lfc {
		vm := testVM()
		vm.Scaling.EnableLFCMetrics = ptr(true)
		m.s.UpdateVM(vm)
		pages := make([]float64, 60)
		for i := range pages {
			pages[i] = float64(1000 + 10*i)
		}
		m.s.UpdateLFCMetrics(LFCMetrics{WSSPages: pages})
	}
	m.s.UpdateSystemMetrics(loaded(0.4))
	m.settle(50, 100*time.Millisecond)
	return m.s
}

func BenchmarkNextActionsSteady(b *testing.B) {
	s := benchState(b, false)
	now := t0.Add(time.Second)
	b.ReportAllocs()
	for b.Loop() {
		_ = s.NextActions(now)
	}
}

func BenchmarkNextActionsUpscale(b *testing.B) {
	s := benchState(b, false)
	s.UpdateSystemMetrics(loaded(1.8))
	now := t0.Add(time.Second)
	b.ReportAllocs()
	for b.Loop() {
		a := s.NextActions(now)
		if a.PluginRequest == nil {
			b.Fatal("no upscale")
		}
	}
}

func BenchmarkNextActionsDownscale(b *testing.B) {
	s := benchState(b, false)
	s.UpdateSystemMetrics(idle())
	now := t0.Add(time.Second)
	b.ReportAllocs()
	for b.Loop() {
		a := s.NextActions(now)
		if a.MonitorDownscale == nil {
			b.Fatal("no downscale")
		}
	}
}

func BenchmarkNextActionsLFC(b *testing.B) {
	s := benchState(b, true)
	now := t0.Add(time.Second)
	b.ReportAllocs()
	for b.Loop() {
		_ = s.NextActions(now)
	}
}

// BenchmarkLFCWorkingSet is the estimate over 60 windows, done once per
// LFC scrape (not per decision).
func BenchmarkLFCWorkingSet(b *testing.B) {
	cfg := api.DefaultScalingConfig()
	pages := make([]float64, 60)
	for i := range pages {
		pages[i] = float64(1000 + 10*i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := LFCWorkingSetBytes(cfg, pages); !ok {
			b.Fatal("no estimate")
		}
	}
}
