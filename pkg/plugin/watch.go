package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// vmClient reads and writes vm.neon.tech objects with a plain REST client
// (JSON, so the types' own decoders run).
type vmClient struct{ rc rest.Interface }

func newVMClient(cfg *rest.Config) (*vmClient, error) {
	scheme := runtime.NewScheme()
	if err := vmv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &vmv1.GroupVersion
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	// Each upscale is two writes; the scheduler's own budget (50 QPS) is
	// far too small for a busy cluster's agents.
	c.QPS, c.Burst = 2000, 4000
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("REST client for %s: %w", vmv1.GroupVersion, err)
	}
	return &vmClient{rc: rc}, nil
}

func (c *vmClient) PatchVM(ctx context.Context, namespace, name string, patch []byte) (*vmv1.VirtualMachine, error) {
	var out vmv1.VirtualMachine
	err := c.rc.Patch(types.JSONPatchType).Namespace(namespace).Resource("virtualmachines").Name(name).
		Body(patch).Do(ctx).Into(&out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *vmClient) CreateMigration(ctx context.Context, m *vmv1.VirtualMachineMigration) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	err = c.rc.Post().Namespace(m.Namespace).Resource("virtualmachinemigrations").Body(body).Do(ctx).Error()
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (c *vmClient) DeleteMigration(ctx context.Context, namespace, name string) error {
	err := c.rc.Delete().Namespace(namespace).Resource("virtualmachinemigrations").Name(name).Do(ctx).Error()
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

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
