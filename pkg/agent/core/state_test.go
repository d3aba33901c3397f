package core

import (
	"strings"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func res(milli uint32, mem api.Bytes) api.Resources {
	return api.Resources{VCPU: vmv1.MilliCPU(milli), Mem: mem}
}

// testVM is 0.25–2 vCPU, 1–8 GiB in 1 GiB slots, using 1 CU.
func testVM() VMInfo {
	return VMInfo{Namespace: "ns", Name: "vm", Min: res(250, gib), Max: res(2000, 8*gib), Using: res(250, gib),
		SlotSize: gib, Scaling: api.DefaultScalingConfig()}
}

// idle is a guest with no load and little memory in use.
func idle() SystemMetrics {
	return SystemMetrics{MemTotal: float64(8 * gib), MemAvailable: float64(8 * gib), MemCached: 0}
}

func loaded(load1 float64) SystemMetrics {
	m := idle()
	m.Load1, m.Load5 = load1, load1
	return m
}

// machine drives a State with instant, successful executors.
type machine struct {
	t   *testing.T
	s   *State
	now time.Time
	// capacity caps permits; deny makes the monitor refuse downscales.
	capacity api.Resources
	deny     bool
	log      []string
}

func newMachine(t *testing.T) *machine {
	m := &machine{t: t, s: NewState(DefaultConfig(cu), testVM()), now: t0, capacity: res(100000, 1000*gib)}
	m.s.MonitorConnected()
	return m
}

// step runs every action NextActions returns, each succeeding, in the
// required order, and returns them.
func (m *machine) step() Actions {
	m.t.Helper()
	a := m.s.NextActions(m.now)
	if r := a.PluginRequest; r != nil {
		m.s.PluginRequestStarted(m.now, *r)
		permit := api.Resources{VCPU: min(r.Target.VCPU, m.capacity.VCPU), Mem: min(r.Target.Mem, m.capacity.Mem)}
		permit = maxRes(permit, m.s.VM().Using)
		if err := m.s.PluginRequestSucceeded(m.now, permit); err != nil {
			m.t.Fatal(err)
		}
		m.log = append(m.log, "plugin "+r.Target.String())
	}
	if r := a.MonitorDownscale; r != nil {
		m.s.MonitorRequestStarted(MonitorDownscale, r.Target)
		m.s.MonitorDownscaleResult(m.now, r.Target, !m.deny)
		m.log = append(m.log, "monitor-down "+r.Target.String())
	}
	if r := a.NeonVMRequest; r != nil {
		m.s.NeonVMRequestStarted(*r)
		m.s.NeonVMRequestSucceeded(r.Target)
		m.log = append(m.log, "vm "+r.Target.String())
	}
	if r := a.MonitorUpscale; r != nil {
		m.s.MonitorRequestStarted(MonitorUpscale, r.Target)
		m.s.MonitorUpscaleSucceeded(r.Target)
		m.log = append(m.log, "monitor-up "+r.Target.String())
	}
	return a
}

// settle steps until nothing but a wait is left (at most n rounds), moving
// the clock by tick each round.
func (m *machine) settle(n int, tick time.Duration) {
	m.t.Helper()
	for range n {
		a := m.step()
		m.now = m.now.Add(tick)
		if a.PluginRequest == nil && a.NeonVMRequest == nil && a.MonitorUpscale == nil && a.MonitorDownscale == nil {
			return
		}
	}
}

func TestUpscaleOnLoadOrder(t *testing.T) {
	s := NewState(DefaultConfig(cu), testVM())
	s.MonitorConnected()
	s.UpdateSystemMetrics(loaded(0.9)) // 4 CU: 1 vCPU, 4 GiB

	// First: only the plugin; the VM may not grow without a permit.
	a := s.NextActions(t0)
	if a.PluginRequest == nil || a.PluginRequest.Target != res(1000, 4*gib) {
		t.Fatalf("want a plugin request for 1 vCPU/4Gi, got %+v", a.PluginRequest)
	}
	if a.NeonVMRequest != nil || a.MonitorUpscale != nil {
		t.Fatalf("VM patch or monitor before the permit: %+v", a)
	}
	if a.PluginRequest.LastPermit != nil || a.PluginRequest.Metrics == nil || a.PluginRequest.Metrics.LoadAverage1Min != 0.9 {
		t.Fatalf("plugin request fields: %+v", a.PluginRequest)
	}
	s.PluginRequestStarted(t0, *a.PluginRequest)
	if a := s.NextActions(t0); a.PluginRequest != nil || a.NeonVMRequest != nil {
		t.Fatalf("second request while one is in flight: %+v", a)
	}
	// A partial grant: 750m / 3Gi.
	if err := s.PluginRequestSucceeded(t0, res(750, 3*gib)); err != nil {
		t.Fatal(err)
	}
	// Then the VM, only up to the permit; the monitor still waits.
	a = s.NextActions(t0)
	if a.NeonVMRequest == nil || a.NeonVMRequest.Target != res(750, 3*gib) {
		t.Fatalf("want a VM patch to the permit, got %+v", a.NeonVMRequest)
	}
	if a.NeonVMRequest.Revision != (vmv1.Revision{Value: 1, Flags: vmv1.RevisionFlagUpscale}) {
		t.Fatalf("revision %+v", a.NeonVMRequest.Revision)
	}
	if a.MonitorUpscale != nil {
		t.Fatalf("monitor told before the VM grew: %+v", a.MonitorUpscale)
	}
	// The denied part is retried after 2 s, not before.
	if a.PluginRequest != nil {
		t.Fatalf("plugin retried at once: %+v", a.PluginRequest)
	}
	if a.Wait == nil || a.Wait.Duration != 2*time.Second {
		t.Fatalf("wait %+v, want 2s", a.Wait)
	}
	s.NeonVMRequestStarted(*a.NeonVMRequest)
	s.NeonVMRequestSucceeded(a.NeonVMRequest.Target)
	// Then the monitor, one unit at a time.
	a = s.NextActions(t0)
	if a.MonitorUpscale == nil || a.MonitorUpscale.Target != res(500, 2*gib) || a.MonitorUpscale.Current != res(250, gib) {
		t.Fatalf("want monitor upscale 1 CU, got %+v", a.MonitorUpscale)
	}
	if a.MonitorDownscale != nil {
		t.Fatal("downscale planned with an upscale")
	}
	s.MonitorRequestStarted(MonitorUpscale, a.MonitorUpscale.Target)
	s.MonitorUpscaleSucceeded(a.MonitorUpscale.Target)
	a = s.NextActions(t0.Add(2 * time.Second))
	if a.PluginRequest == nil || a.PluginRequest.Target != res(1000, 4*gib) || *a.PluginRequest.LastPermit != res(750, 3*gib) {
		t.Fatalf("denied upscale not retried after 2s: %+v", a.PluginRequest)
	}
}

func TestUpscaleOnMemory(t *testing.T) {
	m := newMachine(t)
	sys := idle()
	sys.MemAvailable = float64(8*gib - 3*gib + 100*mib) // 4 CU of memory
	m.s.UpdateSystemMetrics(sys)
	m.settle(20, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(1000, 4*gib) {
		t.Fatalf("using %s, want 1 vCPU/4Gi", got)
	}
	if got := *m.s.Approved(); got != res(1000, 4*gib) {
		t.Fatalf("monitor approved %s", got)
	}
}

func TestDownscaleGoesMonitorFirst(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(loaded(0.9))
	m.settle(20, 100*time.Millisecond)
	m.log = nil
	m.s.UpdateSystemMetrics(idle())
	a := m.s.NextActions(m.now)
	if a.NeonVMRequest != nil || a.PluginRequest != nil {
		t.Fatalf("downscale started with the VM or plugin: %+v", a)
	}
	if a.MonitorDownscale == nil || a.MonitorDownscale.Target != res(750, 3*gib) {
		t.Fatalf("want a monitor downscale of one unit, got %+v", a.MonitorDownscale)
	}
	m.settle(30, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(250, gib) {
		t.Fatalf("using %s after downscale (log %v)", got, m.log)
	}
	// Each VM patch came after the monitor's approval of it, and the
	// plugin heard last.
	if m.log[0] != "monitor-down {vCPUs:750m mem:3Gi}" || m.log[len(m.log)-1] != "plugin {vCPUs:250m mem:1Gi}" {
		t.Fatalf("order: %v", m.log)
	}
}

func TestMissingMetricsNeverDownscale(t *testing.T) {
	vm := testVM()
	vm.Using = res(1000, 4*gib)
	s := NewState(DefaultConfig(cu), vm)
	s.MonitorConnected()
	if d := s.Desired(t0); d.Resources != vm.Using {
		t.Fatalf("no metrics: desired %s, want using %s", d.Resources, vm.Using)
	}
	// LFC on but its metrics missing: still no downscale.
	vm.Scaling.EnableLFCMetrics = ptr(true)
	s.UpdateVM(vm)
	s.UpdateSystemMetrics(idle())
	if d := s.Desired(t0); d.Resources != vm.Using {
		t.Fatalf("LFC metrics missing: desired %s", d.Resources)
	}
	a := s.NextActions(t0)
	if a.MonitorDownscale != nil || a.NeonVMRequest != nil {
		t.Fatalf("downscale without metrics: %+v", a)
	}
	s.UpdateLFCMetrics(LFCMetrics{WSSPages: rep(0, 10)})
	if d := s.Desired(t0); d.Resources != res(250, gib) {
		t.Fatalf("all metrics: desired %s", d.Resources)
	}
}

func TestNoMonitorNoDownscale(t *testing.T) {
	vm := testVM()
	vm.Using = res(1000, 4*gib)
	s := NewState(DefaultConfig(cu), vm)
	s.UpdateSystemMetrics(idle())
	a := s.NextActions(t0)
	if a.NeonVMRequest != nil || a.MonitorDownscale != nil {
		t.Fatalf("downscale without a monitor: %+v", a)
	}
}

func TestDeniedDownscaleWindowAndBackoff(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(loaded(0.9))
	m.settle(20, 100*time.Millisecond)
	m.s.UpdateSystemMetrics(idle())
	m.deny = true
	a := m.step() // asks for 750m/3Gi, denied
	if a.MonitorDownscale == nil {
		t.Fatal("no downscale asked")
	}
	denyAt := m.now
	// Within 5 s the desired stays one unit above the denied target: the
	// current 1 vCPU/4 GiB.
	if d := m.s.Desired(denyAt.Add(4 * time.Second)); d.Resources != res(1000, 4*gib) {
		t.Fatalf("desired in the window %s", d.Resources)
	}
	a = m.s.NextActions(denyAt.Add(time.Second))
	if a.MonitorDownscale != nil || a.NeonVMRequest != nil {
		t.Fatalf("downscale retried in the window: %+v", a)
	}
	if a.Wait == nil || a.Wait.Duration != 4*time.Second {
		t.Fatalf("wait %+v, want 4s to the window's end", a.Wait)
	}
	// After the window it asks again, is denied again: the window doubles.
	m.now = denyAt.Add(5 * time.Second)
	if a := m.step(); a.MonitorDownscale == nil || a.MonitorDownscale.Target != res(750, 3*gib) {
		t.Fatalf("no retry after the window: %+v", a.MonitorDownscale)
	}
	second := m.now
	if a := m.s.NextActions(second.Add(9 * time.Second)); a.MonitorDownscale != nil {
		t.Fatal("retried before the doubled window (10s) ended")
	}
	if a := m.s.NextActions(second.Add(10 * time.Second)); a.MonitorDownscale == nil {
		t.Fatal("no retry after the doubled window")
	}
	// The window never passes 60 s.
	d := &deniedDownscale{Count: 20}
	if got := m.s.deniedCooldown(d); got != 60*time.Second {
		t.Fatalf("cooldown after 20 denials %s", got)
	}
	// An approval ends it.
	m.deny = false
	m.now = second.Add(10 * time.Second)
	m.settle(30, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(250, gib) {
		t.Fatalf("using %s", got)
	}
}

func TestMonitorUpscaleRequest(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(idle())
	m.s.MonitorRequestedUpscale(m.now)
	// Base 1 GiB: at least 1 + 1 = 2 units.
	if d := m.s.Desired(m.now); d.Resources != res(500, 2*gib) {
		t.Fatalf("desired %s, want 2 units", d.Resources)
	}
	at := m.now
	m.settle(20, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(500, 2*gib) {
		t.Fatalf("using %s", got)
	}
	// It lasts 10 s, then the idle goal wins again.
	if d := m.s.Desired(at.Add(10 * time.Second)); d.Resources != res(250, gib) {
		t.Fatalf("desired after the window %s", d.Resources)
	}
}

func TestPluginFailureAndTick(t *testing.T) {
	s := NewState(DefaultConfig(cu), testVM())
	s.UpdateSystemMetrics(idle())
	a := s.NextActions(t0)
	if a.PluginRequest == nil || a.PluginRequest.Target != res(250, gib) {
		t.Fatalf("first request goes out at once: %+v", a.PluginRequest)
	}
	s.PluginRequestStarted(t0, *a.PluginRequest)
	s.PluginRequestFailed(t0)
	if a := s.NextActions(t0.Add(2 * time.Second)); a.PluginRequest != nil {
		t.Fatal("retried within 3s of a failure")
	}
	a = s.NextActions(t0.Add(3 * time.Second))
	if a.PluginRequest == nil {
		t.Fatal("no retry after 3s")
	}
	at := t0.Add(3 * time.Second)
	s.PluginRequestStarted(at, *a.PluginRequest)
	if err := s.PluginRequestSucceeded(at, res(250, gib)); err != nil {
		t.Fatal(err)
	}
	a = s.NextActions(at)
	if a.PluginRequest != nil || a.Wait == nil || a.Wait.Duration != 15*time.Second {
		t.Fatalf("want a 15s wait for the tick, got %+v", a)
	}
	if a := s.NextActions(at.Add(15 * time.Second)); a.PluginRequest == nil || a.PluginRequest.Target != res(250, gib) {
		t.Fatalf("no tick after 15s: %+v", a.PluginRequest)
	}
}

func TestBadPermits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		permit api.Resources
	}{
		{"zero", res(0, 0)},
		{"above request", res(2000, 4*gib)},
		{"below using", res(250, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewState(DefaultConfig(cu), testVM())
			s.UpdateSystemMetrics(loaded(0.9))
			a := s.NextActions(t0)
			s.PluginRequestStarted(t0, *a.PluginRequest)
			if err := s.PluginRequestSucceeded(t0, tc.permit); err == nil {
				t.Fatal("bad permit accepted")
			}
			if s.Permit() != nil {
				t.Fatal("bad permit recorded")
			}
			if a := s.NextActions(t0.Add(time.Second)); a.PluginRequest != nil || a.NeonVMRequest != nil {
				t.Fatalf("acted on a bad permit: %+v", a)
			}
		})
	}
}

func TestNeonVMFailureWaits(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(loaded(0.9))
	a := m.s.NextActions(m.now)
	m.s.PluginRequestStarted(m.now, *a.PluginRequest)
	_ = m.s.PluginRequestSucceeded(m.now, a.PluginRequest.Target)
	a = m.s.NextActions(m.now)
	m.s.NeonVMRequestStarted(*a.NeonVMRequest)
	m.s.NeonVMRequestFailed(m.now)
	if a := m.s.NextActions(m.now.Add(4 * time.Second)); a.NeonVMRequest != nil {
		t.Fatal("VM patch retried within 5s")
	}
	if a := m.s.NextActions(m.now.Add(5 * time.Second)); a.NeonVMRequest == nil {
		t.Fatal("no VM patch retry after 5s")
	}
}

func TestStaleVMObjectKeepsOurPatch(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(loaded(0.9))
	m.settle(20, 100*time.Millisecond)
	// An event from before our patch (revision 0) does not undo it.
	m.s.UpdateVM(testVM())
	if got := m.s.VM().Using; got != res(1000, 4*gib) {
		t.Fatalf("stale object overwrote using: %s", got)
	}
	// One carrying our revision is taken.
	vm := testVM()
	vm.Using, vm.Revision = res(1000, 4*gib), 1
	vm.Max = res(750, 3*gib)
	m.s.UpdateVM(vm)
	if got := m.s.Desired(m.now).Resources; got != res(750, 3*gib) {
		t.Fatalf("new bounds not applied: desired %s", got)
	}
}

func TestLFCGoalRaisesDesired(t *testing.T) {
	vm := testVM()
	vm.Scaling.EnableLFCMetrics = ptr(true)
	s := NewState(DefaultConfig(cu), vm)
	s.UpdateSystemMetrics(idle())
	// A flat 3 GiB working set: 3 GiB / 0.75 = 4 units.
	s.UpdateLFCMetrics(LFCMetrics{WSSPages: rep(float64(3*gib/8192), 10)})
	d := s.Desired(t0)
	if d.Resources != res(1000, 4*gib) || d.Parts.LFC != 4 {
		t.Fatalf("desired %s parts %+v, want 4 units from the LFC", d.Resources, d.Parts)
	}
	// Turning LFC off through the VM's config drops it.
	vm.Scaling.EnableLFCMetrics = ptr(false)
	s.UpdateVM(vm)
	if d := s.Desired(t0); d.Resources != res(250, gib) {
		t.Fatalf("LFC off: desired %s", d.Resources)
	}
}

// TestBoundsOverrideShrinksToNewMax: the bounds annotation lowering max
// below what the VM uses brings it down to the new max, monitor first,
// even under load.
func TestBoundsOverrideShrinksToNewMax(t *testing.T) {
	m := newMachine(t)
	m.s.UpdateSystemMetrics(loaded(2))
	m.settle(20, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(2000, 8*gib) {
		t.Fatalf("using %s before the override", got)
	}
	vm := m.s.VM()
	vm.Max = res(500, 2*gib)
	m.s.UpdateVM(vm)
	m.log = nil
	m.settle(30, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(500, 2*gib) {
		t.Fatalf("using %s after max dropped to 500m/2Gi (log %v)", got, m.log)
	}
	if !strings.HasPrefix(m.log[0], "monitor-down") {
		t.Fatalf("shrink did not start with the monitor: %v", m.log)
	}
	// And the minimum: raising min lifts an idle VM.
	m.s.UpdateSystemMetrics(idle())
	vm = m.s.VM()
	vm.Min, vm.Max = res(750, 3*gib), res(2000, 8*gib)
	m.s.UpdateVM(vm)
	m.settle(30, 100*time.Millisecond)
	if got := m.s.VM().Using; got != res(750, 3*gib) {
		t.Fatalf("using %s after min rose to 750m/3Gi", got)
	}
}
