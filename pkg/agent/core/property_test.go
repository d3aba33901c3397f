package core

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

// pending is an action started and not yet answered.
type pending struct {
	kind   string
	target api.Resources
}

// TestPropertyInvariants drives the state machine with random metrics,
// clock jumps, plugin capacities, monitor denials, disconnections and
// executors that answer late or fail, and checks after every decision:
//   - desired is within the VM's bounds, and so is what the VM uses;
//   - a VM patch raises a field only up to the plugin's last permit and
//     lowers it only down to the monitor's approval (and never without a
//     monitor);
//   - the monitor is told of an upscale only once the VM has it;
//   - the plugin is never asked for less than the VM uses;
//   - at most one request of each kind is in flight.
func TestPropertyInvariants(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runProperty(t, seed) })
	}
}

func runProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	vm := testVM()
	s := NewState(DefaultConfig(cu), vm)
	now := t0
	capacity := res(2000, 8*gib)
	deny := false
	connected := false
	var inflight []pending
	busy := map[string]bool{}

	check := func(cond bool, format string, args ...any) {
		t.Helper()
		if !cond {
			t.Fatalf("seed %d at %s: "+format, append([]any{seed, now.Sub(t0)}, args...)...)
		}
	}
	for step := 0; step < 400; step++ {
		switch rng.IntN(8) {
		case 0:
			load := rng.Float64() * 3
			used := api.Bytes(rng.Int64N(int64(9 * gib)))
			s.UpdateSystemMetrics(SystemMetrics{Load1: load, Load5: load * rng.Float64(), MemTotal: float64(8 * gib),
				MemAvailable: float64(8*gib) - float64(min(used, 8*gib)), MemCached: float64(gib)})
		case 1:
			now = now.Add(time.Duration(rng.IntN(6000)) * time.Millisecond)
		case 2:
			capacity = res(uint32(250*(1+rng.IntN(8))), gib*api.Bytes(1+rng.IntN(8)))
		case 3:
			deny = rng.IntN(2) == 0
		case 4:
			if rng.IntN(4) == 0 {
				connected = !connected
				if connected {
					s.MonitorConnected()
				} else {
					s.MonitorDisconnected()
					// Replies on the old connection are lost.
					kept := inflight[:0]
					for _, p := range inflight {
						if p.kind != "monitor-up" && p.kind != "monitor-down" {
							kept = append(kept, p)
						}
					}
					inflight = kept
					busy["monitor"] = false
				}
			} else {
				s.MonitorRequestedUpscale(now)
			}
		default:
			// Answer some in-flight requests.
			kept := inflight[:0]
			for _, p := range inflight {
				if rng.IntN(2) == 0 {
					kept = append(kept, p)
					continue
				}
				fail := rng.IntN(6) == 0
				switch p.kind {
				case "plugin":
					busy["plugin"] = false
					if fail {
						s.PluginRequestFailed(now)
						continue
					}
					permit := api.Resources{VCPU: min(p.target.VCPU, max(capacity.VCPU, s.VM().Using.VCPU)),
						Mem: min(p.target.Mem, max(capacity.Mem, s.VM().Using.Mem))}
					_ = s.PluginRequestSucceeded(now, permit)
				case "vm":
					busy["vm"] = false
					if fail {
						s.NeonVMRequestFailed(now)
					} else {
						s.NeonVMRequestSucceeded(p.target)
					}
				case "monitor-up":
					busy["monitor"] = false
					if fail {
						s.MonitorRequestFailed(now, MonitorUpscale)
					} else {
						s.MonitorUpscaleSucceeded(p.target)
					}
				case "monitor-down":
					busy["monitor"] = false
					if fail {
						s.MonitorRequestFailed(now, MonitorDownscale)
					} else {
						s.MonitorDownscaleResult(now, p.target, !deny)
					}
				}
			}
			inflight = kept
		}

		d := s.Desired(now).Resources
		check(d.FitsIn(vm.Max) && vm.Min.FitsIn(d), "desired %s outside [%s, %s]", d, vm.Min, vm.Max)
		u := s.VM().Using
		check(u.FitsIn(vm.Max) && vm.Min.FitsIn(u), "using %s outside bounds", u)

		a := s.NextActions(now)
		if a.Wait != nil {
			check(a.Wait.Duration > 0, "non-positive wait %s", a.Wait.Duration)
		}
		if r := a.PluginRequest; r != nil {
			check(!busy["plugin"], "second plugin request in flight")
			check(u.FitsIn(r.Target), "plugin asked for %s, below using %s", r.Target, u)
			s.PluginRequestStarted(now, *r)
			busy["plugin"] = true
			inflight = append(inflight, pending{"plugin", r.Target})
		}
		if r := a.NeonVMRequest; r != nil {
			check(!busy["vm"], "second VM patch in flight")
			check(r.Current == u, "patch current %s != using %s", r.Current, u)
			permit, approved := s.Permit(), s.Approved()
			if r.Target.VCPU > u.VCPU {
				check(permit != nil && r.Target.VCPU <= permit.VCPU, "VM cpu raised to %s past permit %v", r.Target.VCPU, permit)
			}
			if r.Target.Mem > u.Mem {
				check(permit != nil && r.Target.Mem <= permit.Mem, "VM mem raised to %s past permit %v", r.Target.Mem, permit)
			}
			if r.Target.VCPU < u.VCPU {
				check(approved != nil && r.Target.VCPU >= approved.VCPU, "VM cpu lowered to %s below approval %v", r.Target.VCPU, approved)
			}
			if r.Target.Mem < u.Mem {
				check(approved != nil && r.Target.Mem >= approved.Mem, "VM mem lowered to %s below approval %v", r.Target.Mem, approved)
			}
			s.NeonVMRequestStarted(*r)
			busy["vm"] = true
			inflight = append(inflight, pending{"vm", r.Target})
		}
		if r := a.MonitorUpscale; r != nil {
			check(a.MonitorDownscale == nil, "upscale and downscale together")
			check(!busy["monitor"], "second monitor request in flight")
			check(r.Target.FitsIn(u), "monitor told of %s before the VM has it (%s)", r.Target, u)
			check(r.Target.VCPU <= max(d.VCPU, r.Current.VCPU) && r.Target.Mem <= max(d.Mem, r.Current.Mem),
				"monitor told of %s, above desired %s", r.Target, d)
			s.MonitorRequestStarted(MonitorUpscale, r.Target)
			busy["monitor"] = true
			inflight = append(inflight, pending{"monitor-up", r.Target})
		}
		if r := a.MonitorDownscale; r != nil {
			check(!busy["monitor"], "second monitor request in flight")
			check(r.Target.VCPU >= min(d.VCPU, r.Current.VCPU) && r.Target.Mem >= min(d.Mem, r.Current.Mem),
				"monitor asked for %s, below desired %s", r.Target, d)
			s.MonitorRequestStarted(MonitorDownscale, r.Target)
			busy["monitor"] = true
			inflight = append(inflight, pending{"monitor-down", r.Target})
		}
	}
}

// TestPropertyConverges checks that with cooperative peers the VM reaches
// the desired size for any steady load.
func TestPropertyConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 200; i++ {
		m := newMachine(t)
		load := rng.Float64() * 3
		m.s.UpdateSystemMetrics(loaded(load))
		m.settle(100, 500*time.Millisecond)
		want := m.s.Desired(m.now).Resources
		if got := m.s.VM().Using; got != want {
			t.Fatalf("load %.2f: using %s, desired %s (log %v)", load, got, want, m.log)
		}
		if got := *m.s.Approved(); got != want {
			t.Fatalf("load %.2f: monitor approved %s, desired %s", load, got, want)
		}
	}
}

// TestPropertySmallUnitsWholeSlots: with a compute unit smaller than the
// slot, every VM patch is still whole slots and the invariants hold.
func TestPropertySmallUnitsWholeSlots(t *testing.T) {
	for seed := uint64(0); seed < 100; seed++ {
		rng := rand.New(rand.NewPCG(seed, 9))
		small := api.Resources{VCPU: 250, Mem: 256 * mib}
		vm := testVM()
		s := NewState(DefaultConfig(small), vm)
		s.MonitorConnected()
		now := t0
		for step := 0; step < 200; step++ {
			load := rng.Float64() * 2
			s.UpdateSystemMetrics(SystemMetrics{Load1: load, Load5: load, MemTotal: float64(8 * gib),
				MemAvailable: float64(8*gib) - rng.Float64()*float64(6*gib)})
			a := s.NextActions(now)
			if r := a.PluginRequest; r != nil {
				s.PluginRequestStarted(now, *r)
				// Grant a ragged amount: at most 3.3 GiB of memory.
				p := api.Resources{VCPU: r.Target.VCPU, Mem: min(r.Target.Mem, max(3*gib+300*mib, s.VM().Using.Mem))}
				_ = s.PluginRequestSucceeded(now, p)
			}
			if r := a.NeonVMRequest; r != nil {
				if r.Target.Mem%gib != 0 {
					t.Fatalf("seed %d: patch to %s, not whole slots", seed, r.Target.Mem)
				}
				if p := s.Permit(); r.Target.Mem > r.Current.Mem && (p == nil || r.Target.Mem > p.Mem) {
					t.Fatalf("seed %d: patch %s past permit %v", seed, r.Target, p)
				}
				s.NeonVMRequestStarted(*r)
				s.NeonVMRequestSucceeded(r.Target)
			}
			if r := a.MonitorUpscale; r != nil {
				s.MonitorRequestStarted(MonitorUpscale, r.Target)
				s.MonitorUpscaleSucceeded(r.Target)
			}
			if r := a.MonitorDownscale; r != nil {
				s.MonitorRequestStarted(MonitorDownscale, r.Target)
				s.MonitorDownscaleResult(now, r.Target, true)
			}
			now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		}
	}
}
