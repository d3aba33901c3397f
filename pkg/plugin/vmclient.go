package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	vmv1 "github.com/vmscale/vmscale/api/v1"
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

func (c *vmClient) GetVM(ctx context.Context, namespace, name string) (*vmv1.VirtualMachine, error) {
	var out vmv1.VirtualMachine
	if err := c.rc.Get().Namespace(namespace).Resource("virtualmachines").Name(name).Do(ctx).Into(&out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *vmClient) PatchVM(ctx context.Context, namespace, name string, patch []byte) (*vmv1.VirtualMachine, error) {
	var out vmv1.VirtualMachine
	err := c.rc.Patch(types.JSONPatchType).Namespace(namespace).Resource("virtualmachines").Name(name).
		Body(patch).Do(ctx).Into(&out)
	if err != nil {
		// A failed `test` op is answered 422.
		if status, ok := err.(apierrors.APIStatus); ok && status.Status().Code == http.StatusUnprocessableEntity {
			return nil, fmt.Errorf("%w: %w", ErrPatchConflict, err)
		}
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
