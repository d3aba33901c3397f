package plugin

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/state"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// watchCluster starts informers on Nodes, Pods, VirtualMachines and
// VirtualMachineMigrations feeding e, and waits until each has listed
// everything (in that order of registration), or fails after timeout.
func watchCluster(ctx context.Context, e *Enforcer, kube kubernetes.Interface, vc *vmClient, timeout time.Duration) error {
	factory := informers.NewSharedInformerFactory(kube, 0)
	nodes := factory.Core().V1().Nodes().Informer()
	pods := factory.Core().V1().Pods().Informer()
	vms := cache.NewSharedIndexInformer(
		cache.NewListWatchFromClient(vc.rc, "virtualmachines", corev1.NamespaceAll, fields.Everything()),
		&vmv1.VirtualMachine{}, 0, cache.Indexers{})
	vmms := cache.NewSharedIndexInformer(
		cache.NewListWatchFromClient(vc.rc, "virtualmachinemigrations", corev1.NamespaceAll, fields.Everything()),
		&vmv1.VirtualMachineMigration{}, 0, cache.Indexers{})

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{nodes, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { e.OnNode(o.(*corev1.Node)) },
			UpdateFunc: func(_, o any) { e.OnNode(o.(*corev1.Node)) },
			DeleteFunc: func(o any) {
				if n, ok := unwrap(o).(*corev1.Node); ok {
					e.OnNodeDelete(n.Name)
				}
			},
		}},
		{pods, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { e.OnPod(o.(*corev1.Pod)) },
			UpdateFunc: func(_, o any) { e.OnPod(o.(*corev1.Pod)) },
			DeleteFunc: func(o any) {
				if p, ok := unwrap(o).(*corev1.Pod); ok {
					e.OnPodDelete(state.PodKey{Namespace: p.Namespace, Name: p.Name})
				}
			},
		}},
		{vms, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { e.OnVM(o.(*vmv1.VirtualMachine)) },
			UpdateFunc: func(_, o any) { e.OnVM(o.(*vmv1.VirtualMachine)) },
			DeleteFunc: func(o any) {
				if vm, ok := unwrap(o).(*vmv1.VirtualMachine); ok {
					e.OnVMDelete(vm.Namespace, vm.Name)
				}
			},
		}},
		{vmms, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { e.OnMigration(o.(*vmv1.VirtualMachineMigration)) },
			UpdateFunc: func(_, o any) { e.OnMigration(o.(*vmv1.VirtualMachineMigration)) },
			DeleteFunc: func(o any) {
				if m, ok := unwrap(o).(*vmv1.VirtualMachineMigration); ok {
					e.OnMigrationDelete(m.Namespace, m.Name, m.Spec.VMName)
				}
			},
		}},
	}
	synced := make([]cache.InformerSynced, 0, len(handlers))
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return fmt.Errorf("watch: add event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	factory.Start(ctx.Done())
	go vms.Run(ctx.Done())
	go vmms.Run(ctx.Done())

	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(wctx.Done(), synced...) {
		return fmt.Errorf("startup: Nodes, Pods, VirtualMachines and VirtualMachineMigrations not all listed and handled within %s", timeout)
	}
	return nil
}

func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
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
		e.log.Error("pod annotations unreadable; accounting it by what could be read", "err", err, "pod", info.Key.String())
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
		e.log.Error("VM annotations unreadable; ignoring the bad ones", "err", err, "vm", obj.Namespace+"/"+obj.Name)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := vmKey{vm.Namespace, vm.Name}
	v := e.entry(k)
	if rv := vm.ResourceVersion; rv != "" {
		v.seenRVs = append(v.seenRVs, rv)
		if len(v.seenRVs) > seenRVsKept {
			v.seenRVs = v.seenRVs[1:]
		}
		switch {
		case v.ownRV == "" || rv == v.ownRV:
			v.ownRV = ""
		case e.clock.Now().Before(v.ownRVUntil):
			// The watch has not caught up with the plugin's own write.
			return
		default:
			// The watch never delivered that version (it relisted):
			// it is the newer one by now.
			v.ownRV = ""
		}
	}
	e.setVMLocked(vm)
}

// seenRVsKept is how many of a VM's latest resourceVersions from the watch
// the plugin remembers, to recognise a write of its own that the watch has
// already delivered (and perhaps gone past).
const seenRVsKept = 8

// ownWriteWait is how long watch events are taken as older than the
// plugin's own write while the watch has not delivered it.
const ownWriteWait = 30 * time.Second

// setOwnVMLocked records the VM as the plugin's own write returned it,
// unless the watch has delivered that version already (the watch's copy
// is then the same or newer).
func (e *Enforcer) setOwnVMLocked(vm *vmpod.VM) {
	v := e.entry(vmKey{vm.Namespace, vm.Name})
	if rv := vm.ResourceVersion; rv != "" {
		if slices.Contains(v.seenRVs, rv) {
			return
		}
		v.ownRV, v.ownRVUntil = rv, e.clock.Now().Add(ownWriteWait)
	}
	e.setVMLocked(vm)
}

func (e *Enforcer) setVMLocked(vm *vmpod.VM) {
	k := vmKey{vm.Namespace, vm.Name}
	v := e.entry(k)
	v.vm = vm
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
