package core

import (
	"errors"
	"fmt"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

// VMInfo is what the state machine knows of the VirtualMachine object.
type VMInfo struct {
	Namespace, Name string
	// Min and Max are the scaling bounds (from the spec, or the bounds
	// annotation); Using is spec.guest.{cpus,memorySlots}.use.
	Min, Max, Using api.Resources
	// SlotSize is spec.guest.memorySlotSize; every memory amount the agent
	// asks for is a whole number of slots.
	SlotSize api.Bytes
	// Scaling is the VM's scaling config: defaults with its overrides.
	Scaling api.ScalingConfig
	// Revision is spec.targetRevision's value (0 if unset).
	Revision int64
}

// State is one VM's scaling state. Its methods record what happened; only
// NextActions decides. It is not safe for concurrent use.
type State struct {
	cfg    Config
	vm     VMInfo
	system *SystemMetrics
	lfc    *LFCMetrics
	// wss is the working set estimated from lfc, kept from the scrape so
	// decisions do not redo it.
	wss *float64

	plugin  pluginState
	monitor monitorState
	neonvm  neonvmState
	// revision is the last target revision written (or seen) on the VM.
	revision int64
}

type pluginState struct {
	ongoing       *api.Resources
	lastRequest   *timedResources
	lastFailureAt *time.Time
	permit        *api.Resources
}

type timedResources struct {
	At        time.Time
	Resources api.Resources
}

// MonitorRequestKind says which way a monitor request goes.
type MonitorRequestKind string

const (
	MonitorUpscale   MonitorRequestKind = "upscale"
	MonitorDownscale MonitorRequestKind = "downscale"
)

type monitorState struct {
	ongoing          *monitorRequest
	requestedUpscale *requestedUpscale
	denied           *deniedDownscale
	// approved is what the monitor has agreed the VM may use; nil while no
	// monitor is connected.
	approved      *api.Resources
	upFailureAt   *time.Time
	downFailureAt *time.Time
}

type monitorRequest struct {
	Kind      MonitorRequestKind
	Requested api.Resources
}

type requestedUpscale struct {
	At   time.Time
	Base api.Resources
}

type deniedDownscale struct {
	At                 time.Time
	Current, Requested api.Resources
	// Count is how many times in a row this target was denied.
	Count int
}

type neonvmState struct {
	ongoing  *api.Resources
	failedAt *time.Time
}

// NewState starts the state of a VM with no metrics, no permit and no
// monitor connection.
func NewState(cfg Config, vm VMInfo) *State {
	return &State{cfg: cfg, vm: vm, revision: vm.Revision}
}

// Config is the state's configuration.
func (s *State) Config() Config { return s.cfg }

// VM is the VM as the state machine sees it (Using reflects our own
// patches before the watch shows them).
func (s *State) VM() VMInfo { return s.vm }

// Permit is the plugin's last permit, nil before the first.
func (s *State) Permit() *api.Resources { return cloneRes(s.plugin.permit) }

// Approved is the monitor's last approval, nil while disconnected.
func (s *State) Approved() *api.Resources { return cloneRes(s.monitor.approved) }

// UpdateVM takes a new view of the VM object. The Using we set with our
// own patch wins over an object older than that patch (an event already
// in flight when the patch went out) and while a patch is in flight.
func (s *State) UpdateVM(vm VMInfo) {
	using := s.vm.Using
	stale := s.neonvm.ongoing != nil || vm.Revision < s.revision
	s.vm = vm
	if stale {
		s.vm.Using = using
	}
	s.revision = max(s.revision, vm.Revision)
	s.wss = workingSet(s.vm.Scaling, s.lfc)
}

// UpdateSystemMetrics records a scrape of the guest's exporter.
func (s *State) UpdateSystemMetrics(m SystemMetrics) { s.system = &m }

// UpdateLFCMetrics records a scrape of the file-cache metrics.
func (s *State) UpdateLFCMetrics(m LFCMetrics) {
	s.lfc = &m
	s.wss = workingSet(s.vm.Scaling, s.lfc)
}

// HasAllMetrics reports whether every metric the VM's config needs is known.
func (s *State) HasAllMetrics() bool {
	return s.system != nil && (!*s.vm.Scaling.EnableLFCMetrics || s.lfc != nil)
}

// PluginRequestStarted records that a request went to the plugin.
func (s *State) PluginRequestStarted(now time.Time, req PluginRequest) {
	s.plugin.ongoing = &req.Target
	s.plugin.lastRequest = &timedResources{At: now, Resources: req.Target}
}

// ErrBadPermit is a permit the agent cannot use.
var ErrBadPermit = errors.New("bad permit")

// PluginRequestSucceeded records the plugin's permit. A permit that is
// zero, above what was asked, or below what the VM uses counts as a
// failure, and the error says why.
func (s *State) PluginRequestSucceeded(now time.Time, permit api.Resources) error {
	req := s.plugin.ongoing
	s.plugin.ongoing = nil
	var err error
	switch {
	case permit.HasZero():
		err = fmt.Errorf("%w: %s has a zero field", ErrBadPermit, permit)
	case req != nil && permit.AnyAbove(*req):
		err = fmt.Errorf("%w: %s is above the request %s", ErrBadPermit, permit, *req)
	case !s.vm.Using.FitsIn(permit):
		err = fmt.Errorf("%w: %s is below what the VM uses, %s", ErrBadPermit, permit, s.vm.Using)
	}
	if err != nil {
		s.plugin.lastFailureAt = &now
		return err
	}
	s.plugin.lastFailureAt = nil
	s.plugin.permit = &permit
	return nil
}

// PluginRequestFailed records a failed plugin request.
func (s *State) PluginRequestFailed(now time.Time) {
	s.plugin.ongoing = nil
	s.plugin.lastFailureAt = &now
}

// MonitorConnected records a new monitor connection: the monitor starts
// out approving what the VM uses.
func (s *State) MonitorConnected() {
	u := s.vm.Using
	s.monitor = monitorState{approved: &u}
}

// MonitorDisconnected forgets the monitor: no downscale without one.
func (s *State) MonitorDisconnected() { s.monitor = monitorState{} }

// MonitorRequestedUpscale records the monitor asking for more memory.
func (s *State) MonitorRequestedUpscale(now time.Time) {
	if s.monitor.approved == nil {
		return
	}
	s.monitor.requestedUpscale = &requestedUpscale{At: now, Base: *s.monitor.approved}
}

// MonitorRequestStarted records a request sent to the monitor.
func (s *State) MonitorRequestStarted(kind MonitorRequestKind, target api.Resources) {
	s.monitor.ongoing = &monitorRequest{Kind: kind, Requested: target}
}

// MonitorUpscaleSucceeded records the monitor's confirmation.
func (s *State) MonitorUpscaleSucceeded(target api.Resources) {
	s.monitor.ongoing = nil
	s.monitor.upFailureAt = nil
	if s.monitor.approved != nil {
		s.monitor.approved = &target
	}
}

// MonitorDownscaleResult records the monitor's answer to a downscale.
func (s *State) MonitorDownscaleResult(now time.Time, target api.Resources, ok bool) {
	s.monitor.ongoing = nil
	s.monitor.downFailureAt = nil
	if s.monitor.approved == nil {
		return
	}
	if ok {
		s.monitor.approved = &target
		s.monitor.denied = nil
		return
	}
	count := 1
	if d := s.monitor.denied; d != nil && d.Requested == target {
		count = d.Count + 1
	}
	s.monitor.denied = &deniedDownscale{At: now, Current: *s.monitor.approved, Requested: target, Count: count}
}

// MonitorRequestFailed records a monitor request that errored or timed out.
func (s *State) MonitorRequestFailed(now time.Time, kind MonitorRequestKind) {
	s.monitor.ongoing = nil
	if kind == MonitorUpscale {
		s.monitor.upFailureAt = &now
	} else {
		s.monitor.downFailureAt = &now
	}
}

// NeonVMRequestStarted records a VM patch going out.
func (s *State) NeonVMRequestStarted(req NeonVMRequest) {
	s.neonvm.ongoing = &req.Target
	s.revision = max(s.revision, req.Revision.Value)
}

// NeonVMRequestSucceeded records an applied patch: the VM now uses target.
func (s *State) NeonVMRequestSucceeded(target api.Resources) {
	s.neonvm.ongoing = nil
	s.neonvm.failedAt = nil
	s.vm.Using = target
}

// NeonVMRequestFailed records a failed patch.
func (s *State) NeonVMRequestFailed(now time.Time) {
	s.neonvm.ongoing = nil
	s.neonvm.failedAt = &now
}

// deniedCooldown is how long the denial keeps the goal up: the base window,
// doubled for each repeated denial of the same target, capped.
func (s *State) deniedCooldown(d *deniedDownscale) time.Duration {
	c := s.cfg.MonitorDeniedDownscaleCooldown
	for i := 1; i < d.Count && c < s.cfg.MonitorDeniedDownscaleMaxCooldown; i++ {
		c *= 2
	}
	if s.cfg.MonitorDeniedDownscaleMaxCooldown > 0 {
		c = min(c, s.cfg.MonitorDeniedDownscaleMaxCooldown)
	}
	return c
}

func cloneRes(r *api.Resources) *api.Resources {
	if r == nil {
		return nil
	}
	c := *r
	return &c
}

// Revision builds the VM's target revision for a change from cur to target.
func revisionFor(value int64, cur, target api.Resources) vmv1.Revision {
	var flags vmv1.RevisionFlags
	if target.AnyAbove(cur) {
		flags |= vmv1.RevisionFlagUpscale
	}
	if cur.AnyAbove(target) {
		flags |= vmv1.RevisionFlagDownscale
	}
	return vmv1.Revision{Value: value, Flags: flags}
}
