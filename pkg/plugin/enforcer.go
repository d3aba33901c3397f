package plugin

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// ErrPatchConflict is wrapped by Client.PatchVM's error when a `test` op of
// the patch failed: the VM changed since the plugin last saw it.
var ErrPatchConflict = errors.New("VirtualMachine changed under the patch")

// Client is the plugin's reads and writes of the cluster beyond its watches.
type Client interface {
	// GetVM reads a VirtualMachine from the apiserver.
	GetVM(ctx context.Context, namespace, name string) (*vmv1.VirtualMachine, error)
	// PatchVM applies a JSON patch to a VirtualMachine and returns it as
	// patched.
	PatchVM(ctx context.Context, namespace, name string, patch []byte) (*vmv1.VirtualMachine, error)
	// CreateMigration creates a VirtualMachineMigration; one that already
	// exists counts as created.
	CreateMigration(ctx context.Context, m *vmv1.VirtualMachineMigration) error
	// DeleteMigration deletes one; a missing one counts as deleted.
	DeleteMigration(ctx context.Context, namespace, name string) error
}

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
	vm   *vmpod.VM
	rv   uint64
	pods map[state.PodKey]struct{}
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
	log     logr.Logger
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

// NewEnforcer makes an Enforcer that grants nothing until Start.
func NewEnforcer(cfg config.Config, log logr.Logger, clk clock.WithTicker, client Client, metrics *Metrics) *Enforcer {
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

// OnNode records a node's capacity.
func (e *Enforcer) OnNode(n *corev1.Node) {
	alloc := n.Status.Allocatable
	total := api.Resources{
		VCPU: vmv1.MilliCPU(max(alloc.Cpu().MilliValue(), 0)),
		Mem:  api.Bytes(max(alloc.Memory().Value(), 0)),
	}
	e.mu.Lock()
	old, known := e.st.Node(n.Name)
	changed := !known || old.CPU.Total != uint64(total.VCPU) || old.Mem.Total != uint64(total.Mem)
	e.st.SetNode(n.Name, total)
	e.nodeLabels[n.Name] = n.Labels
	e.mu.Unlock()
	if changed {
		e.queue.Add(nodeItem(n.Name))
	}
}

// OnNodeDelete forgets a node.
func (e *Enforcer) OnNodeDelete(name string) {
	e.mu.Lock()
	e.st.RemoveNode(name)
	delete(e.nodeLabels, name)
	e.mu.Unlock()
}

// OnPod records a pod.
func (e *Enforcer) OnPod(p *corev1.Pod) {
	if e.cfg.Ignored(p.Namespace) {
		return
	}
	info, err := vmpod.PodFromObject(p)
	if err != nil {
		e.log.Error(err, "pod annotations unreadable; accounting it by what could be read", "pod", info.Key.String())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if old := e.pods[info.Key]; old != nil && old.VM != info.VM && old.VM != "" {
		delete(e.entry(vmKey{info.Key.Namespace, old.VM}).pods, info.Key)
	}
	e.pods[info.Key] = info
	if info.VM != "" {
		v := e.entry(vmKey{info.Key.Namespace, info.VM})
		v.pods[info.Key] = struct{}{}
		v.notify()
	}
	e.recomputeLocked(info.Key)
	if info.VM != "" {
		e.queue.Add(podItem(info.Key))
	}
}

// OnPodDelete forgets a pod and frees what it held.
func (e *Enforcer) OnPodDelete(key state.PodKey) {
	e.mu.Lock()
	defer e.mu.Unlock()
	info := e.pods[key]
	delete(e.pods, key)
	if info != nil && info.VM != "" {
		if v := e.vms[vmKey{key.Namespace, info.VM}]; v != nil {
			delete(v.pods, key)
			v.notify()
			e.dropIfUnusedLocked(vmKey{key.Namespace, info.VM})
		}
	}
	if old, ok := e.st.RemovePod(key); ok && old.Node != "" {
		e.queue.Add(nodeItem(old.Node))
	}
}

// OnVM records a VirtualMachine. Updates older than what the plugin already
// holds (its own patch's result can overtake the watch) are ignored.
func (e *Enforcer) OnVM(obj *vmv1.VirtualMachine) {
	vm, err := vmpod.VMFromObject(obj)
	if err != nil {
		e.log.Error(err, "VM annotations unreadable; ignoring the bad ones", "vm", obj.Namespace+"/"+obj.Name)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.setVMLocked(vm)
}

func (e *Enforcer) setVMLocked(vm *vmpod.VM) {
	k := vmKey{vm.Namespace, vm.Name}
	v := e.entry(k)
	rv, _ := strconv.ParseUint(vm.ResourceVersion, 10, 64)
	if v.vm != nil && rv != 0 && rv < v.rv {
		return
	}
	v.vm, v.rv = vm, rv
	if v.decidedFor != nil && (vm.Requested == nil || *vm.Requested != *v.decidedFor) {
		v.decidedFor = nil
	}
	v.notify()
	for key := range v.pods {
		e.recomputeLocked(key)
	}
	if vm.PodName != "" {
		e.queue.Add(podItem(state.PodKey{Namespace: vm.Namespace, Name: vm.PodName}))
	}
}

// OnVMDelete forgets a VirtualMachine.
func (e *Enforcer) OnVMDelete(namespace, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := vmKey{namespace, name}
	v := e.vms[k]
	if v == nil {
		return
	}
	v.vm = nil
	v.notify()
	for key := range v.pods {
		e.recomputeLocked(key)
	}
	e.dropIfUnusedLocked(k)
}

func (e *Enforcer) dropIfUnusedLocked(k vmKey) {
	if v := e.vms[k]; v != nil && v.vm == nil && len(v.pods) == 0 && len(v.migrations) == 0 {
		delete(e.vms, k)
	}
}

// OnMigration records a VirtualMachineMigration: while one is unfinished,
// its VM's pod counts as migrating; a finished one the plugin created is
// deleted.
func (e *Enforcer) OnMigration(m *vmv1.VirtualMachineMigration) {
	finished := m.Status.Phase == vmv1.VmmSucceeded || m.Status.Phase == vmv1.VmmFailed
	e.mu.Lock()
	defer e.mu.Unlock()
	k := vmKey{m.Namespace, m.Spec.VMName}
	v := e.entry(k)
	if finished {
		delete(v.migrations, m.Name)
	} else {
		v.migrations[m.Name] = true
	}
	for key := range v.pods {
		e.recomputeLocked(key)
	}
	if finished && m.Labels[api.CreatedBySchedulerLabel] == "true" {
		e.queue.Add(migrationItem(m.Namespace, m.Name))
	}
	e.dropIfUnusedLocked(k)
}

// OnMigrationDelete forgets a VirtualMachineMigration.
func (e *Enforcer) OnMigrationDelete(namespace, name, vmName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := vmKey{namespace, vmName}
	v := e.vms[k]
	if v == nil {
		return
	}
	delete(v.migrations, name)
	for key := range v.pods {
		e.recomputeLocked(key)
	}
	e.dropIfUnusedLocked(k)
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

// podForFilter is the accounting's view of any pod the scheduler shows,
// known to the watch or not yet. Only the watch places a pod: the
// scheduler's copy names the node it assumed for the pod from the scheduling
// cycle's Reserve on, before any binding, and the plugin's watch can trail
// the scheduler's, so a pod first seen here is placed nowhere.
func (e *Enforcer) podForFilterLocked(p *corev1.Pod) state.Pod {
	key := state.PodKey{Namespace: p.Namespace, Name: p.Name}
	if rec, ok := e.st.Pod(key); ok {
		return rec
	}
	info, _ := vmpod.PodFromObject(p)
	info.Node = ""
	return e.recordLocked(info)
}

// Ready reports whether startup is complete.
func (e *Enforcer) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ready
}
