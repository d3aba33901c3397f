package plugin

import (
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// MaxRequestPatches bounds the VM writes the permit path has in flight.
// Beyond what the apiserver can take, more concurrent writes only make each
// of them slower, until most miss their deadline while still costing the
// apiserver their work (measured: 1,000 permits/s offered, a fifth of them
// upscales, on an apiserver taking ~200 VM writes/s, turned 2,000 of 2,600
// patches into timeouts). Held back here, a request waits for a slot within
// its own deadline, and one that times out waiting cost the apiserver
// nothing. Below the apiserver's rate it never binds (200 upscales/s at
// 20 ms a write keep about 4 in flight).
const MaxRequestPatches = 32

type vmKey struct{ Namespace, Name string }

func (k vmKey) String() string { return k.Namespace + "/" + k.Name }

// vmEntry is everything known of one VirtualMachine: the object (nil until
// seen), its runner pods, and the approval being written.
type vmEntry struct {
	vm *vmpod.VM
	// ownRV is the resourceVersion of the plugin's own last write while
	// the watch has not delivered it yet (until ownRVUntil): watch events
	// before it are older than the copy the plugin holds. seenRVs are the
	// resourceVersions the watch delivered lately. Versions are opaque:
	// only compared for equality.
	ownRV      string
	ownRVUntil time.Time
	seenRVs    []string
	pods       map[state.PodKey]struct{}
	// inflight is an approval being written; the pods hold it meanwhile.
	inflight *api.Resources
	// decidedFor is the request the latest approval was decided for, so
	// a waiting agent can be answered as soon as the decision is written.
	decidedFor *api.Resources
	// migrations are the VM's unfinished VirtualMachineMigrations;
	// creating is set while the plugin creates one.
	migrations map[string]bool
	creating   bool
	// changed is closed and replaced on every change, waking waiters.
	changed chan struct{}
}

func (v *vmEntry) notify() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// Enforcer is the plugin's state and its reactions to the cluster, apart
// from the scheduler framework: watch events come in through the On*
// methods, agents' requests through Permit, and workers apply grants and
// migrations through Client.
type Enforcer struct {
	cfg     config.Config
	log     *slog.Logger
	clock   clock.WithTicker
	client  Client
	metrics *Metrics

	mu    sync.Mutex
	st    *state.State
	pods  map[state.PodKey]*vmpod.Pod
	vms   map[vmKey]*vmEntry
	ready bool
	// nodeLabels feed the per-node metrics' extra labels.
	nodeLabels map[string]map[string]string

	queue workqueue.TypedRateLimitingInterface[queueKey]
	// writeSlots holds one token per permit-path VM write in flight.
	writeSlots chan struct{}
}

// NewEnforcer makes an Enforcer that grants nothing until Start; a nil log
// drops its lines.
func NewEnforcer(cfg config.Config, log *slog.Logger, clk clock.WithTicker, client Client, metrics *Metrics) *Enforcer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Enforcer{
		cfg: cfg, log: log, clock: clk, client: client, metrics: metrics,
		st:         state.New(cfg.State()),
		pods:       map[state.PodKey]*vmpod.Pod{},
		vms:        map[vmKey]*vmEntry{},
		nodeLabels: map[string]map[string]string{},
		writeSlots: make(chan struct{}, MaxRequestPatches),
		queue:      newQueue(cfg.PatchRetryWait(), clk),
	}
	if metrics != nil {
		metrics.watch(e)
	}
	return e
}

func (e *Enforcer) entry(k vmKey) *vmEntry {
	v := e.vms[k]
	if v == nil {
		v = &vmEntry{pods: map[state.PodKey]struct{}{}, migrations: map[string]bool{}, changed: make(chan struct{})}
		e.vms[k] = v
	}
	return v
}

func (e *Enforcer) dropIfUnusedLocked(k vmKey) {
	if v := e.vms[k]; v != nil && v.vm == nil && len(v.pods) == 0 && len(v.migrations) == 0 {
		delete(e.vms, k)
	}
}

// recordLocked is the accounting's view of a known pod.
func (e *Enforcer) recordLocked(info *vmpod.Pod) state.Pod {
	var vm *vmpod.VM
	var inflight *api.Resources
	migrating := false
	if info.VM != "" {
		if v := e.vms[vmKey{info.Key.Namespace, info.VM}]; v != nil {
			vm, inflight = v.vm, v.inflight
			migrating = (len(v.migrations) > 0 || v.creating) && !info.MigrationTarget
		}
	}
	rec := vmpod.Record(info, vm, inflight)
	rec.Migrating = migrating && rec.Node != ""
	return rec
}

// recomputeLocked brings a pod's accounting up to date with what is known
// of it and its VM, keeping a tentative placement from Reserve until the
// binding shows up, and wakes the node's pending requests when the pod
// frees capacity.
func (e *Enforcer) recomputeLocked(key state.PodKey) {
	info := e.pods[key]
	if info == nil {
		return
	}
	rec := e.recordLocked(info)
	old, known := e.st.Pod(key)
	if known && old.Tentative && rec.Node == "" && !info.Terminal {
		rec.Node, rec.Tentative = old.Node, true
	}
	if known && old == rec {
		return
	}
	e.st.SetPod(rec)
	if known && old.Node != "" && (old.Node != rec.Node || rec.Reserved.AnyAbove(old.Reserved) || old.Reserved.AnyAbove(rec.Reserved)) {
		e.queue.Add(nodeItem(old.Node))
	}
	// A new placement, or a tentative one confirmed by its binding (only a
	// confirmed pod may be migrated away: the node's watermark check must
	// run again).
	if rec.Node != "" && (rec.Node != old.Node || old.Tentative != rec.Tentative) {
		e.queue.Add(nodeItem(rec.Node))
	}
}

// Ready reports whether startup is complete.
func (e *Enforcer) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ready
}
