package core

import (
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

// Dump is the state as JSON for the agent's state-dump endpoint.
type Dump struct {
	VM            VMInfo         `json:"vm"`
	System        *SystemMetrics `json:"systemMetrics"`
	LFC           *LFCMetrics    `json:"lfcMetrics"`
	Desired       Desired        `json:"desired"`
	Permit        *api.Resources `json:"permit"`
	PluginPending *api.Resources `json:"pluginOngoing"`
	LastRequestAt *time.Time     `json:"pluginLastRequestAt"`
	Approved      *api.Resources `json:"monitorApproved"`
	MonitorBusy   bool           `json:"monitorOngoing"`
	DeniedUntil   *time.Time     `json:"deniedDownscaleUntil"`
	NeonVMPending *api.Resources `json:"neonvmOngoing"`
	Revision      int64          `json:"revision"`
}

// Dump copies the state for display at now.
func (s *State) Dump(now time.Time) Dump {
	d := Dump{VM: s.vm, Desired: s.Desired(now), Permit: cloneRes(s.plugin.permit), PluginPending: cloneRes(s.plugin.ongoing),
		Approved: cloneRes(s.monitor.approved), MonitorBusy: s.monitor.ongoing != nil, NeonVMPending: cloneRes(s.neonvm.ongoing),
		Revision: s.revision}
	if s.system != nil {
		m := *s.system
		d.System = &m
	}
	if s.lfc != nil {
		d.LFC = &LFCMetrics{WSSPages: append([]float64(nil), s.lfc.WSSPages...)}
	}
	if r := s.plugin.lastRequest; r != nil {
		at := r.At
		d.LastRequestAt = &at
	}
	if den := s.monitor.denied; den != nil {
		until := den.At.Add(s.deniedCooldown(den))
		d.DeniedUntil = &until
	}
	return d
}
