package core

import (
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

// Actions is what to do now. Each field is nil when there is nothing of its
// kind to do; Wait, when set, is when to call NextActions again if nothing
// else happens first.
type Actions struct {
	Wait             *Wait
	PluginRequest    *PluginRequest
	NeonVMRequest    *NeonVMRequest
	MonitorUpscale   *MonitorRequest
	MonitorDownscale *MonitorRequest
}

// Wait is the time until a window or a retry wait ends.
type Wait struct{ Duration time.Duration }

// PluginRequest asks the plugin for Target.
type PluginRequest struct {
	LastPermit *api.Resources
	Target     api.Resources
	Metrics    *api.Metrics
}

// NeonVMRequest patches the VM from Current to Target with Revision.
type NeonVMRequest struct {
	Current, Target api.Resources
	Revision        vmv1.Revision
}

// MonitorRequest tells the monitor about an upscale, or asks it for a
// downscale, from Current (its approval) to Target.
type MonitorRequest struct {
	Current, Target api.Resources
}

// Desired is what the VM should use now, and the goal it came from.
type Desired struct {
	Resources api.Resources
	GoalCU    uint32
	Parts     GoalParts
}

// NextActions decides what to do at now. It changes nothing: the caller
// reports each action it starts and how it ended.
func (s *State) NextActions(now time.Time) Actions {
	var acts Actions
	w := waiter{}
	des := s.desiredAt(now, &w).Resources

	acts.PluginRequest = s.pluginAction(now, des, &w)
	acts.NeonVMRequest = s.neonvmAction(now, des, acts.PluginRequest, &w)
	acts.MonitorUpscale = s.monitorUpscaleAction(now, des, &w)
	if acts.MonitorUpscale == nil {
		acts.MonitorDownscale = s.monitorDownscaleAction(now, des, &w)
	}
	if w.set {
		acts.Wait = &Wait{Duration: w.d}
	}
	return acts
}

// waiter keeps the shortest positive wait.
type waiter struct {
	set bool
	d   time.Duration
}

func (w *waiter) until(now, t time.Time) {
	if d := t.Sub(now); d > 0 && (!w.set || d < w.d) {
		w.set, w.d = true, d
	}
}

// Desired is what the VM should use at now.
func (s *State) Desired(now time.Time) Desired { return s.desiredAt(now, &waiter{}) }

// desiredAt computes the desired resources and notes in w when a window that
// raises them closes.
func (s *State) desiredAt(now time.Time, w *waiter) Desired {
	cu := s.cfg.ComputeUnit
	goal, parts := goalCU(s.vm.Scaling, cu, s.system, s.wss)

	// The monitor asked for memory: at least one unit above what it had.
	if ru := s.monitor.requestedUpscale; ru != nil {
		if end := ru.At.Add(s.cfg.MonitorRequestedUpscaleValid); now.Before(end) {
			goal = max(goal, 1+uint32(ru.Base.Mem/cu.Mem))
			w.until(now, end)
		}
	}
	// The monitor refused a downscale: stay at least one unit above it.
	var floor *api.Resources
	if d := s.monitor.denied; d != nil {
		if end := d.At.Add(s.deniedCooldown(d)); now.Before(end) {
			cpuUnits := 1 + uint32(d.Requested.VCPU/cu.VCPU)
			memUnits := 1 + uint32(d.Requested.Mem/cu.Mem)
			goal = max(goal, cpuUnits, memUnits)
			floor = &api.Resources{
				VCPU: min(d.Current.VCPU, cu.VCPU*vmv1.MilliCPU(cpuUnits)),
				Mem:  min(d.Current.Mem, cu.Mem*api.Bytes(memUnits)),
			}
			w.until(now, end)
		}
	}

	r := api.Resources{VCPU: cu.VCPU * vmv1.MilliCPU(goal), Mem: s.roundToSlots(cu.Mem * api.Bytes(goal))}
	if floor != nil {
		r = maxRes(r, *floor)
	}
	if !s.HasAllMetrics() {
		// Never downscale on missing metrics.
		r = maxRes(r, s.vm.Using)
	}
	r = clampRes(r, s.vm.Min, s.vm.Max)
	return Desired{Resources: r, GoalCU: goal, Parts: parts}
}

func (s *State) roundToSlots(b api.Bytes) api.Bytes {
	if s.vm.SlotSize == 0 {
		return b
	}
	return (b + s.vm.SlotSize - 1) / s.vm.SlotSize * s.vm.SlotSize
}

func (s *State) pluginAction(now time.Time, desired api.Resources, w *waiter) *PluginRequest {
	p := &s.plugin
	if p.ongoing != nil {
		return nil
	}
	using := s.vm.Using
	if s.neonvm.ongoing != nil {
		using = maxRes(using, *s.neonvm.ongoing)
	}
	// The plugin hears of a downscale only once it is done.
	target := maxRes(desired, using)

	timeForTick := p.lastRequest == nil
	if p.lastRequest != nil {
		tick := p.lastRequest.At.Add(s.cfg.PluginRequestTick)
		timeForTick = !now.Before(tick)
		w.until(now, tick)
	}
	wantNew := p.permit == nil || target != *p.permit
	if wantNew && p.lastRequest != nil && p.permit != nil && p.lastRequest.Resources.AnyAbove(*p.permit) {
		// The last request was granted only in part: ask again, but not
		// in a tight loop.
		retry := p.lastRequest.At.Add(s.cfg.PluginDeniedRetryWait)
		if now.Before(retry) {
			wantNew = false
			w.until(now, retry)
		}
	}
	if p.lastFailureAt != nil {
		if retry := p.lastFailureAt.Add(s.cfg.PluginRetryWait); now.Before(retry) {
			w.until(now, retry)
			return nil
		}
	}
	if !timeForTick && !wantNew {
		return nil
	}
	if !wantNew {
		target = using
	}
	var m *api.Metrics
	if s.system != nil {
		m = &api.Metrics{LoadAverage1Min: float32(s.system.Load1)}
	}
	return &PluginRequest{LastPermit: cloneRes(p.permit), Target: target, Metrics: m}
}

func (s *State) neonvmAction(now time.Time, desired api.Resources, planned *PluginRequest, w *waiter) *NeonVMRequest {
	using := s.vm.Using
	// Down no further than the monitor approved (no monitor: not at all);
	// up no further than the plugin permitted (no permit yet: not at all).
	lower, upper := using, using
	if s.monitor.approved != nil {
		lower = *s.monitor.approved
	}
	if s.plugin.permit != nil {
		upper = *s.plugin.permit
	}
	target := clampChange(using, desired, lower, upper)
	// The VM takes whole slots: round toward what the VM uses, so a raise
	// stays within the permit and a cut within the approval.
	if s.vm.SlotSize > 0 && target.Mem%s.vm.SlotSize != 0 {
		if target.Mem > using.Mem {
			target.Mem = max(using.Mem, target.Mem/s.vm.SlotSize*s.vm.SlotSize)
		} else {
			target.Mem = min(using.Mem, s.roundToSlots(target.Mem))
		}
	}
	if target == using || s.neonvm.ongoing != nil {
		return nil
	}
	// Wait while the plugin is being asked for less than this.
	pluginTarget := s.plugin.ongoing
	if planned != nil {
		pluginTarget = &planned.Target
	}
	if pluginTarget != nil && target.AnyAbove(*pluginTarget) {
		return nil
	}
	if f := s.neonvm.failedAt; f != nil {
		if retry := f.Add(s.cfg.NeonVMRetryWait); now.Before(retry) {
			w.until(now, retry)
			return nil
		}
	}
	return &NeonVMRequest{Current: using, Target: target, Revision: revisionFor(s.revision+1, using, target)}
}

func (s *State) monitorUpscaleAction(now time.Time, desired api.Resources, w *waiter) *MonitorRequest {
	m := &s.monitor
	if m.approved == nil || m.ongoing != nil {
		return nil
	}
	cu := s.cfg.ComputeUnit
	a := *m.approved
	// Up to what the VM has and is wanted, one unit at a time.
	t := a
	if desired.VCPU > a.VCPU {
		t.VCPU = min(desired.VCPU, s.vm.Using.VCPU, a.VCPU+cu.VCPU)
	}
	if desired.Mem > a.Mem {
		t.Mem = min(desired.Mem, s.vm.Using.Mem, a.Mem+s.roundToSlots(cu.Mem))
	}
	t = maxRes(t, a)
	if !t.AnyAbove(a) {
		return nil
	}
	if f := m.upFailureAt; f != nil {
		if retry := f.Add(s.cfg.MonitorRetryWait); now.Before(retry) {
			w.until(now, retry)
			return nil
		}
	}
	return &MonitorRequest{Current: a, Target: t}
}

func (s *State) monitorDownscaleAction(now time.Time, desired api.Resources, w *waiter) *MonitorRequest {
	m := &s.monitor
	if m.approved == nil || m.ongoing != nil {
		return nil
	}
	cu := s.cfg.ComputeUnit
	a := *m.approved
	// Down to what is wanted, one unit at a time.
	t := a
	if desired.VCPU < a.VCPU {
		t.VCPU = max(desired.VCPU, a.VCPU-min(a.VCPU, cu.VCPU))
	}
	if desired.Mem < a.Mem {
		// A step is a unit, or a slot when slots are bigger.
		step := s.roundToSlots(cu.Mem)
		t.Mem = max(desired.Mem, a.Mem-min(a.Mem, step))
	}
	if !a.AnyAbove(t) {
		return nil
	}
	if f := m.downFailureAt; f != nil {
		if retry := f.Add(s.cfg.MonitorRetryWait); now.Before(retry) {
			w.until(now, retry)
			return nil
		}
	}
	return &MonitorRequest{Current: a, Target: t}
}

// clampChange moves from cur toward want, per field, going down no lower
// than lower and up no higher than upper (and never past want).
func clampChange(cur, want, lower, upper api.Resources) api.Resources {
	out := want
	if want.VCPU < cur.VCPU {
		out.VCPU = min(cur.VCPU, max(want.VCPU, lower.VCPU))
	} else if want.VCPU > cur.VCPU {
		out.VCPU = max(cur.VCPU, min(want.VCPU, upper.VCPU))
	}
	if want.Mem < cur.Mem {
		out.Mem = min(cur.Mem, max(want.Mem, lower.Mem))
	} else if want.Mem > cur.Mem {
		out.Mem = max(cur.Mem, min(want.Mem, upper.Mem))
	}
	return out
}

func maxRes(a, b api.Resources) api.Resources {
	return api.Resources{VCPU: max(a.VCPU, b.VCPU), Mem: max(a.Mem, b.Mem)}
}

func clampRes(r, lo, hi api.Resources) api.Resources {
	return api.Resources{VCPU: min(max(r.VCPU, lo.VCPU), hi.VCPU), Mem: min(max(r.Mem, lo.Mem), hi.Mem)}
}
