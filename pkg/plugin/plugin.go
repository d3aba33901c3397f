// Package plugin is the AutoscaleEnforcer kube-scheduler plugin: it places
// VM runner pods only where their reservations fit, answers the
// autoscaler-agents' permit requests on :10299 by writing approvals on the
// VirtualMachines, and migrates VMs off nodes past their watermark
// (docs/protocols.md#permit-protocol and #scheduler-plugin). The accounting itself is in state, the
// wire handling in permit, the object reading in vmpod.
package plugin

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"
	"sigs.k8s.io/yaml"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// Name is the plugin's name in the scheduler configuration.
const Name = "AutoscaleEnforcer"

// AutoscaleEnforcer is the framework side of the plugin.
type AutoscaleEnforcer struct {
	e   *Enforcer
	cfg config.Config
	log logr.Logger
}

var (
	_ fwk.FilterPlugin     = (*AutoscaleEnforcer)(nil)
	_ fwk.ScorePlugin      = (*AutoscaleEnforcer)(nil)
	_ fwk.ScoreExtensions  = (*AutoscaleEnforcer)(nil)
	_ fwk.ReservePlugin    = (*AutoscaleEnforcer)(nil)
	_ fwk.PostFilterPlugin = (*AutoscaleEnforcer)(nil)
)

// New builds the plugin: reads its config (the profile's args if given,
// else the file at config.DefaultPath), starts the permit API and metrics,
// lists and watches the cluster, and returns once startup is complete (or
// fails if that takes longer than startupEventHandlingTimeoutSeconds).
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	log := klog.FromContext(ctx).WithName(Name)
	cfg, err := loadConfig(obj)
	if err != nil {
		return nil, err
	}
	vc, err := newVMClient(h.KubeConfig())
	if err != nil {
		return nil, err
	}
	metrics := NewMetrics(cfg.NodeMetricLabels)
	e := NewEnforcer(cfg, log, clock.RealClock{}, vc, metrics)

	if err := ServeMetrics(ctx, cfg.MetricsAddr, metrics, e.Ready); err != nil {
		return nil, err
	}
	listening := make(chan string, 1)
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- permit.Serve(ctx, cfg.PermitAddr, &permit.Handler{Backend: e, Log: log.WithName("permit"), Observe: metrics.ObservePermit}, listening)
	}()
	select {
	case addr := <-listening:
		log.Info("permit API listening", "addr", addr)
	case err := <-serveErr:
		return nil, err
	}

	if err := watchCluster(ctx, e, h.ClientSet(), vc, cfg.StartupTimeout()); err != nil {
		return nil, err
	}
	e.Start(ctx, cfg.ReconcileWorkers)
	return &AutoscaleEnforcer{e: e, cfg: cfg, log: log}, nil
}

func loadConfig(obj runtime.Object) (config.Config, error) {
	u, ok := obj.(*runtime.Unknown)
	if !ok || u == nil || len(u.Raw) == 0 {
		return config.Load(config.DefaultPath)
	}
	raw := u.Raw
	if u.ContentType == runtime.ContentTypeYAML {
		var err error
		if raw, err = yaml.YAMLToJSON(raw); err != nil {
			return config.Config{}, fmt.Errorf("plugin args: %w", err)
		}
	}
	if s := strings.TrimSpace(string(raw)); s == "null" || s == "{}" {
		return config.Load(config.DefaultPath)
	}
	return config.Parse(raw)
}

// Name is the plugin's name.
func (p *AutoscaleEnforcer) Name() string { return Name }

// Filter refuses a node where the pod's reservation would not fit next to
// the pods the scheduler has there (bound or assumed).
func (p *AutoscaleEnforcer) Filter(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeInfo fwk.NodeInfo) *fwk.Status {
	if pod.Spec.SchedulerName != p.cfg.SchedulerName {
		return fwk.AsStatus(fmt.Errorf("pod %s/%s has schedulerName %q, not %q", pod.Namespace, pod.Name, pod.Spec.SchedulerName, p.cfg.SchedulerName))
	}
	node := nodeInfo.Node()
	if node == nil {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node not found")
	}
	alloc := nodeInfo.GetAllocatable()
	total := api.Resources{VCPU: vmv1.MilliCPU(max(alloc.GetMilliCPU(), 0)), Mem: api.Bytes(max(alloc.GetMemory(), 0))}
	e := p.e
	e.mu.Lock()
	held := make([]state.Pod, 0, len(nodeInfo.GetPods()))
	for _, pi := range nodeInfo.GetPods() {
		other := pi.GetPod()
		if other.Namespace == pod.Namespace && other.Name == pod.Name {
			continue
		}
		held = append(held, e.podForFilterLocked(other))
	}
	candidate := e.podForFilterLocked(pod)
	e.mu.Unlock()
	if !state.FitsIn(total, held, candidate) {
		return fwk.NewStatus(fwk.Unschedulable, "Not enough resources for Pod")
	}
	return nil
}

// Score prefers nodes by the state's usage curve.
func (p *AutoscaleEnforcer) Score(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeInfo fwk.NodeInfo) (int64, *fwk.Status) {
	e := p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.Score(nodeInfo.Node().Name, e.podForFilterLocked(pod)), nil
}

// ScoreExtensions has NormalizeScore.
func (p *AutoscaleEnforcer) ScoreExtensions() fwk.ScoreExtensions { return p }

// NormalizeScore spreads equal nodes: with randomize on, each non-zero
// score becomes a random one between 1 and itself.
func (p *AutoscaleEnforcer) NormalizeScore(_ context.Context, _ fwk.CycleState, _ *corev1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	if !p.cfg.Scoring.Randomize {
		return nil
	}
	for i := range scores {
		if scores[i].Score > 0 {
			scores[i].Score = 1 + rand.Int64N(scores[i].Score)
		}
	}
	return nil
}

// Reserve holds the pod's reservation on the chosen node until its binding
// shows up. It never refuses a placement (the scheduler decided; a node left
// over budget is counted in a metric), only a pod the watch has already
// seen bound to another node. A pod already bound to this node is a repeated
// attempt for a placement that happened, and holds nothing more.
func (p *AutoscaleEnforcer) Reserve(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeName string) *fwk.Status {
	e := p.e
	if e.cfg.Ignored(pod.Namespace) {
		return nil
	}
	e.mu.Lock()
	err := e.st.Reserve(e.podForFilterLocked(pod), nodeName)
	over := false
	if n, ok := e.st.Node(nodeName); ok {
		over = n.OverBudget()
	}
	e.mu.Unlock()
	if err != nil {
		return fwk.AsStatus(err)
	}
	if over {
		e.metrics.reserveOverBudget()
		p.log.Info("reserved a pod on a node now over budget", "pod", pod.Namespace+"/"+pod.Name, "node", nodeName)
	}
	e.queue.Add("node/" + nodeName)
	return nil
}

// Unreserve drops a tentative reservation on nodeName; a pod the watch has
// not shown is forgotten altogether.
func (p *AutoscaleEnforcer) Unreserve(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, nodeName string) {
	e := p.e
	e.mu.Lock()
	defer e.mu.Unlock()
	key := state.PodKey{Namespace: pod.Namespace, Name: pod.Name}
	_, watched := e.pods[key]
	if e.st.Unreserve(key, nodeName, !watched) {
		e.queue.Add("node/" + nodeName)
	}
}

// PostFilter only counts pods that fit nowhere.
func (p *AutoscaleEnforcer) PostFilter(_ context.Context, _ fwk.CycleState, pod *corev1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	p.e.metrics.podUnschedulable()
	p.log.V(3).Info("no node has room", "pod", pod.Namespace+"/"+pod.Name)
	return nil, fwk.NewStatus(fwk.Unschedulable)
}

// Permit answers an agent; see Enforcer.Permit.
var _ permit.Backend = (*Enforcer)(nil)
