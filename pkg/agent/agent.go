package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent/billing"
	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/agent/pluginclient"
	"github.com/vmscale/vmscale/pkg/agent/vminfo"
	"github.com/vmscale/vmscale/pkg/agent/vmpatch"
	"github.com/vmscale/vmscale/pkg/api"
)

// Agent runs one runner per VM on its node that it is responsible for.
type Agent struct {
	d     *deps
	node  string
	cache cache.Cache

	mu      sync.Mutex
	runners map[types.NamespacedName]*handle
	wg      sync.WaitGroup
}

type handle struct {
	r      *runner
	cancel context.CancelFunc
	done   chan struct{}
}

// Options wire an Agent.
type Options struct {
	Config  *Config
	Node    string // K8S_NODE_NAME
	Rest    *rest.Config
	Log     *slog.Logger
	Metrics *Metrics
	Clock   clock.WithTicker // clock.RealClock{} if nil
}

// New builds an agent: a cache of the autoscaling-enabled VMs and of the
// scheduler's pods, and the executors.
func New(o Options) (*Agent, error) {
	if o.Node == "" {
		return nil, errors.New("the agent needs its node's name (K8S_NODE_NAME)")
	}
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := vmv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := cache.New(o.Rest, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		&vmv1.VirtualMachine{}: {Label: labels.SelectorFromSet(labels.Set{api.EnabledLabel: "true"})},
		&corev1.Pod{}: {Namespaces: map[string]cache.Config{pluginclient.SchedulerNamespace: {}},
			Label: labels.SelectorFromSet(labels.Set{"name": o.Config.Scheduler.SchedulerName})},
	}})
	if err != nil {
		return nil, fmt.Errorf("build the agent's cache: %w", err)
	}
	cl, err := client.New(o.Rest, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("build the agent's client: %w", err)
	}
	// Every runner talks to the one scheduler: at most pluginConns requests
	// at a time, over connections kept alive for them.
	const pluginConns = 32
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: pluginConns, IdleConnTimeout: time.Minute, DisableCompression: true}}
	d := &deps{
		cfg: o.Config, core: o.Config.Core(), defaults: o.Config.DefaultScaling(), log: o.Log, clk: clk,
		plugin:  &pluginclient.Client{HTTP: httpc, Port: int(o.Config.Scheduler.RequestPort), Slots: make(chan struct{}, pluginConns)},
		finder:  &pluginclient.Finder{Reader: c, SchedulerName: o.Config.Scheduler.SchedulerName, CacheFor: time.Second},
		patcher: &vmpatch.Patcher{Client: cl},
		metrics: o.Metrics,
	}
	return &Agent{d: d, node: o.Node, cache: c, runners: map[types.NamespacedName]*handle{}}, nil
}

// Run watches VMs and runs their runners until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	inf, err := a.cache.GetInformer(ctx, &vmv1.VirtualMachine{})
	if err != nil {
		return fmt.Errorf("VM informer: %w", err)
	}
	if _, err := a.cache.GetInformer(ctx, &corev1.Pod{}); err != nil {
		return fmt.Errorf("scheduler pod informer: %w", err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.sync(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.sync(ctx, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if vm, ok := obj.(*vmv1.VirtualMachine); ok {
				a.stop(types.NamespacedName{Namespace: vm.Namespace, Name: vm.Name}, "VM deleted")
			}
		},
	}); err != nil {
		return fmt.Errorf("watch VMs: %w", err)
	}
	cacheErr := make(chan error, 1)
	go func() { cacheErr <- a.cache.Start(ctx) }()
	if !a.cache.WaitForCacheSync(ctx) {
		return errors.New("the VM cache did not sync")
	}
	a.d.log.Info("watching VMs", "node", a.node, "scheduler", a.d.cfg.Scheduler.SchedulerName)
	if b := a.d.cfg.Billing; b != nil && b.Clients.HTTP != nil {
		a.wg.Go(func() { a.runBilling(ctx, *b) })
	}
	<-ctx.Done()
	a.mu.Lock()
	for k := range a.runners {
		a.stopLocked(k, "agent stopping")
	}
	a.mu.Unlock()
	a.wg.Wait()
	if err := <-cacheErr; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// sync starts, updates, restarts or stops the VM's runner.
func (a *Agent) sync(ctx context.Context, obj any) {
	vm, ok := obj.(*vmv1.VirtualMachine)
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: vm.Namespace, Name: vm.Name}
	if !vminfo.Ours(vm, a.node, a.d.cfg.Scheduler.SchedulerName) {
		a.stop(key, "VM no longer this agent's to scale")
		return
	}
	info, err := vminfo.Extract(vm, a.d.defaults)
	if err != nil {
		a.d.metrics.BadVMs.Inc()
		a.d.log.Error("cannot read the VM; leaving it as it is", "vm", key.String(), "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if h := a.runners[key]; h != nil {
		if h.r.podIP == vm.Status.PodIP {
			h.r.updateVM(vm, info)
			return
		}
		a.stopLocked(key, "VM moved to another pod")
	}
	if ctx.Err() != nil {
		return
	}
	r := newRunner(a.d, vm, info)
	rctx, cancel := context.WithCancel(ctx)
	h := &handle{r: r, cancel: cancel, done: make(chan struct{})}
	a.runners[key] = h
	a.d.metrics.Runners.Inc()
	r.log.Info("starting the VM's runner", "podIP", vm.Status.PodIP, "using", info.Using.String(),
		"min", info.Min.String(), "max", info.Max.String())
	a.wg.Go(func() {
		defer close(h.done)
		r.run(rctx)
	})
}

func (a *Agent) stop(key types.NamespacedName, why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopLocked(key, why)
}

func (a *Agent) stopLocked(key types.NamespacedName, why string) {
	h := a.runners[key]
	if h == nil {
		return
	}
	delete(a.runners, key)
	h.cancel()
	<-h.done
	a.d.metrics.Runners.Dec()
	a.d.log.Info("stopped the VM's runner", "vm", key.String(), "reason", why)
}

// Dump is every runner's state, keyed by namespace/name.
func (a *Agent) Dump() map[string]core.Dump {
	a.mu.Lock()
	rs := make(map[string]*runner, len(a.runners))
	for k, h := range a.runners {
		rs[k.String()] = h.r
	}
	a.mu.Unlock()
	out := make(map[string]core.Dump, len(rs))
	for k, r := range rs {
		out[k] = r.dump()
	}
	return out
}

// DumpHandler serves Dump as JSON.
func (a *Agent) DumpHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		d := a.Dump()
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		type entry struct {
			VM    string    `json:"vm"`
			State core.Dump `json:"state"`
		}
		out := struct {
			Node    string  `json:"node"`
			Runners []entry `json:"runners"`
		}{Node: a.node, Runners: make([]entry, 0, len(keys))}
		for _, k := range keys {
			out.Runners = append(out.Runners, entry{k, d[k]})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

// ServeDump serves the state dump on the config's dumpState port.
func (a *Agent) ServeDump(ctx context.Context) error {
	dc := a.d.cfg.DumpState
	if dc == nil {
		return nil
	}
	srv := &http.Server{Addr: net.JoinHostPort("", strconv.Itoa(int(dc.Port))), Handler: http.TimeoutHandler(a.DumpHandler(), secs(dc.TimeoutSeconds), "timed out"),
		ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("state dump server: %w", err)
	}
	return nil
}

// runBilling collects the node's billable VMs and pushes events.
func (a *Agent) runBilling(ctx context.Context, cfg billing.Config) {
	host, _ := os.Hostname()
	acc := billing.NewAccumulator(cfg, host, a.d.clk.Now())
	sink := &billing.HTTPSink{Config: *cfg.Clients.HTTP, Client: &http.Client{}}
	collect := a.d.clk.NewTicker(secs(cfg.CollectEverySeconds))
	defer collect.Stop()
	accumulate := a.d.clk.NewTicker(secs(cfg.AccumulateEverySeconds))
	defer accumulate.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-collect.C():
			acc.Collect(a.d.clk.Now(), a.billingSamples(ctx))
		case <-accumulate.C():
			events := acc.Flush(a.d.clk.Now())
			if len(events) == 0 {
				continue
			}
			if err := sink.Push(ctx, events); err != nil {
				a.d.metrics.BillingPushes.WithLabelValues("error").Inc()
				a.d.log.Warn("billing push failed; these events are dropped", "events", len(events), "err", err)
				continue
			}
			a.d.metrics.BillingPushes.WithLabelValues("ok").Inc()
		}
	}
}

func (a *Agent) billingSamples(ctx context.Context) []billing.Sample {
	var vms vmv1.VirtualMachineList
	if err := a.cache.List(ctx, &vms); err != nil {
		a.d.log.Warn("list VMs for billing", "err", err)
		return nil
	}
	var out []billing.Sample
	for i := range vms.Items {
		vm := &vms.Items[i]
		ep := vm.Annotations[api.BillingEndpointIDAnnotation]
		if ep == "" || vm.Status.Node != a.node || vm.Status.CPUs == nil {
			continue
		}
		switch vm.Status.Phase {
		case vmv1.VmRunning, vmv1.VmScaling, vmv1.VmPreMigrating, vmv1.VmMigrating:
			out = append(out, billing.Sample{EndpointID: ep, VCPUs: vm.Status.CPUs.AsFloat64()})
		}
	}
	return out
}
