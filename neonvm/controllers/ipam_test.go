package controllers

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/ipam"
)

var testPool = types.NamespacedName{Namespace: "neonvm-system", Name: "overlay"}

func ipamVM(name, uid string) *vmv1.VirtualMachine {
	return &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid)}}
}

func newTestIPAM(t *testing.T, c client.Client, cidr string) (*IPAM, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewIPAM(c, c, testPool, cidr, reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func fakeClient(funcs interceptor.Funcs, objs ...client.Object) client.Client {
	s := runtime.NewScheme()
	_ = vmv1.AddToScheme(s)
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).WithInterceptorFuncs(funcs).Build()
}

func TestIPAMCreatesThePoolAndIsIdempotent(t *testing.T) {
	c := fakeClient(interceptor.Funcs{})
	m, _ := newTestIPAM(t, c, "10.100.0.0/16")
	ctx := context.Background()
	a, err := m.Acquire(ctx, ipamVM("a", "uid-a"))
	if err != nil || a != (Address{IP: "10.100.0.1", Mask: "255.255.0.0"}) {
		t.Fatalf("first VM: %+v %v", a, err)
	}
	again, err := m.Acquire(ctx, ipamVM("a", "uid-a"))
	if err != nil || again != a {
		t.Fatalf("again: %+v %v", again, err)
	}
	b, _ := m.Acquire(ctx, ipamVM("b", "uid-b"))
	if b.IP != "10.100.0.2" {
		t.Fatalf("second VM: %+v", b)
	}
	var pool vmv1.IPPool
	if err := c.Get(ctx, testPool, &pool); err != nil {
		t.Fatal(err)
	}
	if pool.Spec.Range != "10.100.0.0/16" || pool.Spec.Allocations["1"] != (vmv1.IPAllocation{ContainerID: "uid-a", PodRef: "default/a"}) {
		t.Fatalf("pool %+v", pool.Spec)
	}
	if err := m.Release(ctx, ipamVM("a", "uid-a")); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, testPool, &pool); err != nil || len(pool.Spec.Allocations) != 1 {
		t.Fatalf("after release: %+v %v", pool.Spec, err)
	}
}

// A write that loses to another writer is retried from a fresh read, and
// never hands out the other writer's address.
func TestIPAMRetriesOnConflict(t *testing.T) {
	raced := false
	var c client.Client
	c = fakeClient(interceptor.Funcs{
		Update: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			if p, ok := obj.(*vmv1.IPPool); ok && !raced {
				raced = true
				// Another replica takes offset 1 between our read and write.
				var theirs vmv1.IPPool
				if err := cl.Get(ctx, client.ObjectKeyFromObject(p), &theirs); err != nil {
					return err
				}
				if theirs.Spec.Allocations == nil {
					theirs.Spec.Allocations = map[string]vmv1.IPAllocation{}
				}
				theirs.Spec.Allocations["1"] = vmv1.IPAllocation{ContainerID: "uid-other", PodRef: "default/other"}
				if err := cl.Update(ctx, &theirs); err != nil {
					return err
				}
			}
			return cl.Update(ctx, obj, opts...)
		},
	}, &vmv1.IPPool{ObjectMeta: metav1.ObjectMeta{Namespace: testPool.Namespace, Name: testPool.Name},
		Spec: vmv1.IPPoolSpec{Range: "10.100.0.0/16"}})
	m, reg := newTestIPAM(t, c, "10.100.0.0/16")
	a, err := m.Acquire(context.Background(), ipamVM("a", "uid-a"))
	if err != nil || a.IP != "10.100.0.2" {
		t.Fatalf("got %+v %v, want 10.100.0.2 (10.100.0.1 went to the other writer)", a, err)
	}
	if n := testutil.ToFloat64(m.metrics.conflicts.WithLabelValues(testPool.String())); n != 1 {
		t.Errorf("conflicts counted %v, want 1", n)
	}
	if n, err := testutil.GatherAndCount(reg, "vmscale_neonvm_ipam_addresses_in_use"); err != nil || n != 1 {
		t.Errorf("in-use series %d %v", n, err)
	}
	if v := testutil.ToFloat64(m.metrics.requests.WithLabelValues("acquire", "ok")); v != 1 {
		t.Errorf("acquire ok %v", v)
	}
}

func TestIPAMPoolFull(t *testing.T) {
	c := fakeClient(interceptor.Funcs{})
	m, _ := newTestIPAM(t, c, "10.0.0.0/30")
	ctx := context.Background()
	for _, uid := range []string{"a", "b"} {
		if _, err := m.Acquire(ctx, ipamVM(uid, uid)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Acquire(ctx, ipamVM("c", "c")); !errors.Is(err, ipam.ErrPoolFull) {
		t.Fatalf("third VM in a /30: %v, want ErrPoolFull", err)
	}
	if v := testutil.ToFloat64(m.metrics.requests.WithLabelValues("acquire", "full")); v != 1 {
		t.Errorf("acquire full %v", v)
	}
}

// The reconciler's side: the address goes into the status with
// ExtraNetworkReady=True before the pod; a VM whose extra network is
// turned off gives it back at its next pod; without IPAM the VM runs
// without it and the condition says so.
func TestExtraNetBeforePod(t *testing.T) {
	c := fakeClient(interceptor.Funcs{})
	m, _ := newTestIPAM(t, c, "10.100.0.0/16")
	r := &VMReconciler{Client: c, IPAM: m}
	ctx := context.Background()
	vm := ipamVM("db", "uid-db")
	vm.Spec.ExtraNetwork = &vmv1.ExtraNetwork{Enable: true}
	if ok, err := r.extraNetBeforePod(ctx, vm); !ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	cond := findCond(vm, ConditionExtraNetwork)
	if vm.Status.ExtraNetIP != "10.100.0.1" || vm.Status.ExtraNetMask != "255.255.0.0" || cond == nil ||
		cond.Status != metav1.ConditionTrue || cond.Reason != ReasonExtraNetAllocated {
		t.Fatalf("status %+v", vm.Status)
	}

	vm.Spec.ExtraNetwork.Enable = false
	if ok, err := r.extraNetBeforePod(ctx, vm); !ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	var pool vmv1.IPPool
	_ = c.Get(ctx, testPool, &pool)
	if vm.Status.ExtraNetIP != "" || findCond(vm, ConditionExtraNetwork) != nil || len(pool.Spec.Allocations) != 0 {
		t.Fatalf("turned off: status %+v, pool %+v", vm.Status, pool.Spec)
	}

	vm.Spec.ExtraNetwork.Enable = true
	r.IPAM = nil
	if ok, err := r.extraNetBeforePod(ctx, vm); !ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if c := findCond(vm, ConditionExtraNetwork); c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonExtraNetIPAMDisabled {
		t.Fatalf("without IPAM: %+v", c)
	}
}

func findCond(vm *vmv1.VirtualMachine, typ string) *metav1.Condition {
	for i := range vm.Status.Conditions {
		if vm.Status.Conditions[i].Type == typ {
			return &vm.Status.Conditions[i]
		}
	}
	return nil
}
