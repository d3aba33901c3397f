package agent

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/agent/monitorclient"
	"github.com/vmscale/vmscale/pkg/agent/pluginclient"
	"github.com/vmscale/vmscale/pkg/agent/scrape"
	"github.com/vmscale/vmscale/pkg/agent/vminfo"
	"github.com/vmscale/vmscale/pkg/agent/vmpatch"
	"github.com/vmscale/vmscale/pkg/agent/wakegrid"
	"github.com/vmscale/vmscale/pkg/api"
)

// deps is what every runner shares.
type deps struct {
	cfg      *Config
	core     core.Config
	defaults api.ScalingConfig
	log      *slog.Logger
	clk      clock.WithTicker
	plugin   *pluginclient.Client
	finder   *pluginclient.Finder
	patcher  *vmpatch.Patcher
	metrics  *Metrics
}

// runner scales one VM: it feeds the state machine and carries out its
// actions. Every goroutine it starts ends with the context given to run.
type runner struct {
	d        *deps
	ns, name string
	podIP    string
	log      *slog.Logger

	mu          sync.Mutex
	st          *core.State
	podName     string
	hasRevision bool
	monitor     *monitorclient.Conn
	monitorGen  int
	up, down    *episode
	// lastDesired is the desired size after the last scrape.
	lastDesired api.Resources
	// failures flag the VM as stuck per peer.
	failures map[string]*core.FailureRate
	stuck    map[string]bool
	wake     chan struct{}
}

// episode times one scaling from its decision through its phases.
type episode struct {
	start    time.Time
	revision int64
	patched  bool
	// done is set once the last peer heard of it; the status phase (the
	// controller's report) may still come later, until a new episode
	// replaces this one.
	done bool
	seen map[string]bool
}

func newRunner(d *deps, vm *vmv1.VirtualMachine, info core.VMInfo) *runner {
	r := &runner{d: d, ns: vm.Namespace, name: vm.Name, podIP: vm.Status.PodIP, podName: vm.Status.PodName,
		log:         d.log.With("vm", vm.Namespace+"/"+vm.Name, "pod", vm.Status.PodName),
		st:          core.NewState(d.core, info),
		hasRevision: vm.Spec.TargetRevision != nil,
		wake:        make(chan struct{}, 1),
		stuck:       map[string]bool{},
		failures: map[string]*core.FailureRate{
			"plugin":  failureRate(d.cfg.Scheduler.MaxFailedRequestRate),
			"neonvm":  failureRate(d.cfg.NeonVM.MaxFailedRequestRate),
			"monitor": failureRate(d.cfg.Monitor.MaxFailedRequestRate),
		},
	}
	return r
}

func failureRate(c FailedRequestRate) *core.FailureRate {
	return &core.FailureRate{Interval: secs(c.IntervalSeconds), Threshold: int(c.Threshold)}
}

// outcome records a request's end for the stuck-VM metric; r.mu is held.
func (r *runner) outcome(peer string, now time.Time, failed bool) {
	f := r.failures[peer]
	if failed {
		f.Record(now)
	}
	if stuck := f.Stuck(now); stuck != r.stuck[peer] {
		r.stuck[peer] = stuck
		if stuck {
			r.d.metrics.StuckVMs.WithLabelValues(peer).Inc()
			r.log.Warn("requests keep failing; the VM is stuck", "peer", peer)
		} else {
			r.d.metrics.StuckVMs.WithLabelValues(peer).Dec()
		}
	}
}

func (r *runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *runner) target(src MetricsSourceConfig) *scrape.Target {
	return &scrape.Target{Addr: net.JoinHostPort(r.podIP, strconv.Itoa(int(src.Port))), Path: "/metrics",
		Timeout: secs(src.RequestTimeoutSeconds)}
}

// run decides and acts until ctx ends.
func (r *runner) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sys := r.d.cfg.Metrics.System
	wg.Go(func() {
		r.scrapeLoop(ctx, "system", r.target(sys), sys, func(b []byte) error {
			m, err := scrape.ParseSystem(b)
			if err == nil {
				r.st.UpdateSystemMetrics(m)
			}
			return err
		})
	})
	lfc := r.d.cfg.Metrics.LFC
	wg.Go(func() {
		r.scrapeLoop(ctx, "lfc", r.target(lfc), lfc, func(b []byte) error {
			m, err := scrape.ParseLFC(b)
			if err == nil {
				r.st.UpdateLFCMetrics(m)
			}
			return err
		})
	})
	wsURL := "ws://" + net.JoinHostPort(r.podIP, strconv.Itoa(int(r.d.cfg.Monitor.ServerPort))) + "/monitor"
	wg.Go(func() { monitorclient.Run(ctx, wsURL, r.d.cfg.MonitorClient(), r.d.clk, r.log, r) })

	refresh := secs(r.d.cfg.refreshInterval())
	t := r.d.clk.NewTimer(refresh)
	defer t.Stop()
	for {
		r.mu.Lock()
		now := r.d.clk.Now()
		acts := r.st.NextActions(now)
		r.startActions(ctx, &wg, now, acts)
		r.mu.Unlock()
		wait := refresh
		if acts.Wait != nil && acts.Wait.Duration < wait {
			wait = acts.Wait.Duration
		}
		if wait >= time.Second {
			// Retry waits and ticks are coarse: put them on the grid.
			wait = wakegrid.On(now.Add(wait), wakegrid.Waits).Sub(now)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			if r.monitor != nil {
				r.monitor = nil
				r.d.metrics.MonitorsUp.Dec()
			}
			for peer, stuck := range r.stuck {
				if stuck {
					r.d.metrics.StuckVMs.WithLabelValues(peer).Dec()
					r.stuck[peer] = false
				}
			}
			r.mu.Unlock()
			return
		case <-r.wake:
			// A stopped timer may still hold its old tick; drain it so
			// the next wait starts clean.
			if !t.Stop() {
				select {
				case <-t.C():
				default:
				}
			}
		case <-t.C():
		}
	}
}

// startActions records and launches acts; r.mu is held.
func (r *runner) startActions(ctx context.Context, wg *sync.WaitGroup, now time.Time, acts core.Actions) {
	using := r.st.VM().Using
	if req := acts.PluginRequest; req != nil {
		if req.Target.AnyAbove(using) && (r.up == nil || r.up.done) {
			r.up = &episode{start: now, seen: map[string]bool{}}
			r.log.Info("scaling up", "from", using.String(), "to", req.Target.String())
		}
		r.st.PluginRequestStarted(now, *req)
		areq := &api.AgentRequest{ProtoVersion: api.CurrentPluginProto, Pod: api.PodRef{Namespace: r.ns, Name: r.podName},
			ComputeUnit: &r.d.cfg.Scaling.ComputeUnit, Resources: req.Target, LastPermit: req.LastPermit, Metrics: req.Metrics}
		wg.Go(func() { r.doPlugin(ctx, areq) })
	}
	if req := acts.MonitorDownscale; req != nil && r.monitor != nil {
		if r.down == nil || r.down.done {
			r.down = &episode{start: now, seen: map[string]bool{}}
			r.log.Info("scaling down", "from", using.String(), "to", req.Target.String())
		}
		r.st.MonitorRequestStarted(core.MonitorDownscale, req.Target)
		conn, gen, target := r.monitor, r.monitorGen, req.Target
		wg.Go(func() { r.doMonitor(ctx, conn, gen, core.MonitorDownscale, target) })
	}
	if req := acts.NeonVMRequest; req != nil {
		r.st.NeonVMRequestStarted(*req)
		body, err := vmpatch.Body(req.Target, r.st.VM().SlotSize,
			vmv1.RevisionWithTime{Revision: req.Revision, UpdatedAt: metav1.NewTime(now)}, r.hasRevision)
		if err != nil {
			r.log.Error("cannot build the VM patch", "err", err)
			r.st.NeonVMRequestFailed(now)
		} else {
			wg.Go(func() { r.doNeonVM(ctx, *req, body) })
		}
	}
	if req := acts.MonitorUpscale; req != nil && r.monitor != nil {
		r.st.MonitorRequestStarted(core.MonitorUpscale, req.Target)
		conn, gen, target := r.monitor, r.monitorGen, req.Target
		wg.Go(func() { r.doMonitor(ctx, conn, gen, core.MonitorUpscale, target) })
	}
}

func (r *runner) phase(ep *episode, dir, name string, now time.Time) {
	if ep == nil || ep.seen[name] {
		return
	}
	ep.seen[name] = true
	d := now.Sub(ep.start)
	r.d.metrics.ScalingPhase.WithLabelValues(dir, name).Observe(d.Seconds())
	r.log.Debug("scaling phase done", "direction", dir, "phase", name, "sinceDecision", d)
}

func (r *runner) doPlugin(ctx context.Context, req *api.AgentRequest) {
	start := r.d.clk.Now()
	var permit api.Resources
	ip, err := r.d.finder.SchedulerIP(ctx)
	if err == nil {
		rctx, cancel := context.WithTimeout(ctx, secs(r.d.cfg.Scheduler.RequestTimeoutSeconds))
		var resp api.PluginResponse
		resp, err = r.d.plugin.Request(rctx, ip, req)
		cancel()
		permit = resp.Permit
	}
	if err != nil {
		r.d.finder.Forget() // the scheduler may have moved
	}
	r.mu.Lock()
	now := r.d.clk.Now()
	if err != nil {
		r.st.PluginRequestFailed(now)
	} else {
		err = r.st.PluginRequestSucceeded(now, permit)
	}
	r.outcome("plugin", now, err != nil)
	if err == nil {
		if r.up != nil && !r.up.done {
			r.phase(r.up, "up", "permit", now)
		}
		if r.down != nil && r.down.patched && !r.down.done && !req.Resources.AnyAbove(r.st.VM().Using) {
			r.phase(r.down, "down", "plugin", now)
			r.down.done = true
		}
	}
	r.mu.Unlock()
	r.d.metrics.request("plugin", err, now.Sub(start))
	if err != nil && ctx.Err() == nil {
		r.log.Warn("plugin request failed; will retry", "requested", req.Resources.String(), "err", err)
	} else if err == nil {
		r.log.Debug("plugin permit", "requested", req.Resources.String(), "permit", permit.String())
	}
	r.poke()
}

func (r *runner) doNeonVM(ctx context.Context, req core.NeonVMRequest, body []byte) {
	start := r.d.clk.Now()
	rctx, cancel := context.WithTimeout(ctx, secs(r.d.cfg.NeonVM.RequestTimeoutSeconds))
	err := r.d.patcher.Apply(rctx, r.ns, r.name, body)
	cancel()
	r.mu.Lock()
	now := r.d.clk.Now()
	r.outcome("neonvm", now, err != nil)
	if err != nil {
		r.st.NeonVMRequestFailed(now)
	} else {
		r.st.NeonVMRequestSucceeded(req.Target)
		r.hasRevision = true
		if req.Target.AnyAbove(req.Current) && r.up != nil && !r.up.done {
			r.up.revision = req.Revision.Value
			r.phase(r.up, "up", "vm_patch", now)
		}
		if req.Current.AnyAbove(req.Target) && r.down != nil && !r.down.done {
			r.down.revision, r.down.patched = req.Revision.Value, true
			r.phase(r.down, "down", "vm_patch", now)
		}
	}
	r.mu.Unlock()
	r.d.metrics.request("neonvm", err, now.Sub(start))
	if err != nil && ctx.Err() == nil {
		r.log.Warn("VM patch failed; will retry", "target", req.Target.String(), "err", err)
	} else if err == nil {
		r.log.Info("VM patched", "from", req.Current.String(), "to", req.Target.String(), "revision", req.Revision.Value)
	}
	r.poke()
}

func (r *runner) doMonitor(ctx context.Context, conn *monitorclient.Conn, gen int, kind core.MonitorRequestKind, target api.Resources) {
	start := r.d.clk.Now()
	rctx, cancel := context.WithTimeout(ctx, secs(r.d.cfg.Monitor.ResponseTimeoutSeconds))
	var err error
	var res api.DownscaleResult
	if kind == core.MonitorUpscale {
		err = conn.Upscale(rctx, target)
	} else {
		res, err = conn.Downscale(rctx, target)
	}
	cancel()
	r.mu.Lock()
	now := r.d.clk.Now()
	if gen != r.monitorGen {
		// The connection was replaced meanwhile; its state is gone.
		r.mu.Unlock()
		r.poke()
		return
	}
	r.outcome("monitor", now, err != nil)
	switch {
	case err != nil:
		r.st.MonitorRequestFailed(now, kind)
	case kind == core.MonitorUpscale:
		r.st.MonitorUpscaleSucceeded(target)
		if r.up != nil && !r.up.done && r.st.Desired(now).Resources.FitsIn(target) {
			r.phase(r.up, "up", "monitor", now)
			r.up.done = true
		}
	default:
		r.st.MonitorDownscaleResult(now, target, res.Ok)
		if res.Ok && r.down != nil && !r.down.done {
			r.phase(r.down, "down", "monitor", now)
		}
	}
	r.mu.Unlock()
	peer := "monitor_" + string(kind)
	r.d.metrics.request(peer, err, now.Sub(start))
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("vm-monitor request failed; will retry", "kind", kind, "target", target.String(), "err", err)
	case kind == core.MonitorDownscale && !res.Ok:
		r.log.Info("vm-monitor denied the downscale", "target", target.String(), "status", res.Status)
	}
	r.poke()
}

// Connected implements monitorclient.Events.
func (r *runner) Connected(c *monitorclient.Conn) {
	r.mu.Lock()
	r.monitor = c
	r.monitorGen++
	r.st.MonitorConnected()
	r.mu.Unlock()
	r.d.metrics.MonitorsUp.Inc()
	r.poke()
}

// Disconnected implements monitorclient.Events.
func (r *runner) Disconnected(err error) {
	r.mu.Lock()
	had := r.monitor != nil
	r.monitor = nil
	r.monitorGen++
	r.st.MonitorDisconnected()
	r.mu.Unlock()
	if had {
		r.d.metrics.MonitorsUp.Dec()
	}
	r.poke()
}

// UpscaleRequested implements monitorclient.Events.
func (r *runner) UpscaleRequested() {
	r.mu.Lock()
	r.st.MonitorRequestedUpscale(r.d.clk.Now())
	r.mu.Unlock()
	r.log.Info("vm-monitor asked for more memory")
	r.poke()
}

// updateVM takes a new version of the VM object.
func (r *runner) updateVM(vm *vmv1.VirtualMachine, info core.VMInfo) {
	r.mu.Lock()
	r.st.UpdateVM(info)
	r.podName = vm.Status.PodName
	r.hasRevision = r.hasRevision || vm.Spec.TargetRevision != nil
	if cur := vm.Status.CurrentRevision; cur != nil {
		now := r.d.clk.Now()
		if r.up != nil && r.up.revision > 0 && cur.Revision.Value >= r.up.revision {
			r.phase(r.up, "up", "status", now)
		}
		if r.down != nil && r.down.revision > 0 && cur.Revision.Value >= r.down.revision {
			r.phase(r.down, "down", "status", now)
		}
	}
	r.mu.Unlock()
	r.poke()
}

// scrapeLoop scrapes one source every period, the first time after a
// random part of it, so VMs' scrapes spread out. LFC metrics are only
// scraped while the VM's config enables them.
func (r *runner) scrapeLoop(ctx context.Context, source string, tg *scrape.Target, cfg MetricsSourceConfig, apply func([]byte) error) {
	defer tg.Close()
	period := secs(cfg.SecondsBetweenRequests)
	took := r.d.metrics.ScrapeDuration.WithLabelValues(source)
	okCount := r.d.metrics.Scrapes.WithLabelValues(source, "ok")
	errCount := r.d.metrics.Scrapes.WithLabelValues(source, "error")
	// The first scrape after a random part of the period, so VMs spread
	// over the grid's slots; then every period on the grid.
	now := r.d.clk.Now()
	next := wakegrid.On(now.Add(time.Duration(rand.Int64N(int64(period)+1))), wakegrid.Periodic)
	t := r.d.clk.NewTimer(next.Sub(now))
	defer t.Stop()
	var buf bytes.Buffer
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		now := r.d.clk.Now()
		next = wakegrid.Next(next, now, period, wakegrid.Periodic)
		t.Reset(next.Sub(now))
		if source == "lfc" {
			r.mu.Lock()
			on := *r.st.VM().Scaling.EnableLFCMetrics
			r.mu.Unlock()
			if !on {
				continue
			}
		}
		start := r.d.clk.Now()
		page, err := tg.Get(ctx, &buf)
		changed := false
		if err == nil {
			r.mu.Lock()
			if err = apply(page); err == nil {
				// Wake the decision loop only if the metrics moved what
				// the VM should have: otherwise its decision stands.
				d := r.st.Desired(r.d.clk.Now()).Resources
				changed, r.lastDesired = d != r.lastDesired, d
			}
			r.mu.Unlock()
		}
		took.Observe(r.d.clk.Since(start).Seconds())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			errCount.Inc()
			r.log.Debug("metrics scrape failed", "source", source, "err", err)
			continue
		}
		okCount.Inc()
		if changed {
			r.poke()
		}
	}
}

// dump is the runner's state for the dump endpoint.
func (r *runner) dump() core.Dump {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Dump(r.d.clk.Now())
}

var _ monitorclient.Events = (*runner)(nil)
var _ = vminfo.Extract
