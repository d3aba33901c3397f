package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/controllers"
	"github.com/vmscale/vmscale/neonvm/ipam"
	"github.com/vmscale/vmscale/tests/poll"
)

// argAfter is the value following flag in args.
func argAfter(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// getPool reads an IPPool from the apiserver.
func getPool(t *testing.T, name types.NamespacedName) *vmv1.IPPool {
	t.Helper()
	var p vmv1.IPPool
	if err := k8sClient.Get(context.Background(), name, &p); err != nil {
		t.Fatalf("get IPPool %s: %v", name, err)
	}
	return &p
}

// poolHolder is the allocation of addr in the pool (zero when free).
func poolHolder(t *testing.T, name types.NamespacedName, addr string) vmv1.IPAllocation {
	t.Helper()
	p := getPool(t, name)
	rng, err := ipam.ParseRange(p.Spec.Range)
	if err != nil {
		t.Fatal(err)
	}
	off, ok := rng.Offset(netip.MustParseAddr(addr))
	if !ok {
		t.Fatalf("%s is outside the pool's range %s", addr, rng)
	}
	return p.Spec.Allocations[ipam.Key(off)]
}

// replica is a VM controller replica of its own: a manager whose VM
// reconciler acts only on namespaces with prefix and hands out addresses
// from pool, as a second controller process would.
type replica struct {
	ipam *controllers.IPAM
	reg  *prometheus.Registry
	stop func()
}

func startReplica(t *testing.T, prefix string, pool types.NamespacedName, cidr string) *replica {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// The suite's manager already runs a "virtualmachine" controller.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := controllers.NewIPAM(mgr.GetClient(), mgr.GetAPIReader(), pool, cidr, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&controllers.VMReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Settings: testSettings, IPAM: m,
		MaxConcurrentReconciles: 4,
		EventFilter:             predicate.NewPredicateFuncs(func(o client.Object) bool { return strings.HasPrefix(o.GetNamespace(), prefix) }),
	}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("replica manager: %v", err)
		}
	}()
	r := &replica{ipam: m, reg: reg}
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(r.stop)
	return r
}

// conflicts is the replica's vmscale_neonvm_ipam_write_conflicts_total.
func (r *replica) conflicts(t *testing.T) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "vmscale_neonvm_ipam_write_conflicts_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// gauge is the value of a gauge of the replica for pool.
func (r *replica) gauge(t *testing.T, name string, pool types.NamespacedName) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelValue(m, "pool") == pool.String() {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// extraNetVM is a small VM with the extra network on.
func extraNetVM(ns, name string) *vmv1.VirtualMachine {
	vm := smallVM(ns, name)
	vm.Spec.ExtraNetwork = &vmv1.ExtraNetwork{Enable: true}
	return vm
}

// createVMs creates VMs named <prefix>-<i> for i in [from, to) all at once.
func createVMs(t *testing.T, ns, prefix string, from, to int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, to-from)
	for i := from; i < to; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := k8sClient.Create(context.Background(), extraNetVM(ns, fmt.Sprintf("%s-%02d", prefix, i))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// addresses waits until every VM in ns has an address in its status and
// returns them by VM name; it fails on an address given twice.
func addresses(t *testing.T, ns string, want int) map[string]string {
	t.Helper()
	out := map[string]string{}
	poll.Until(t, 90*time.Second, 200*time.Millisecond, fmt.Sprintf("%d VMs with an address", want), func() error {
		var list vmv1.VirtualMachineList
		if err := k8sClient.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return err
		}
		clear(out)
		n := 0
		for _, vm := range list.Items {
			if vm.DeletionTimestamp != nil {
				continue
			}
			n++
			if vm.Status.ExtraNetIP == "" || vm.Status.PodName == "" {
				continue
			}
			out[vm.Name] = vm.Status.ExtraNetIP
		}
		if n != want || len(out) != want {
			return fmt.Errorf("%d of %d VMs have an address and a pod name", len(out), n)
		}
		return nil
	})
	byAddr := map[string]string{}
	for vm, a := range out {
		if other, dup := byAddr[a]; dup {
			t.Fatalf("%s given to both %s and %s", a, other, vm)
		}
		byAddr[a] = vm
	}
	return out
}

// checkPool fails unless the pool holds exactly the VMs' addresses, each
// held by its VM's UID.
func checkPool(t *testing.T, pool types.NamespacedName, ns string, addrs map[string]string) {
	t.Helper()
	p := getPool(t, pool)
	if len(p.Spec.Allocations) != len(addrs) {
		t.Errorf("the pool holds %d addresses, the VMs %d", len(p.Spec.Allocations), len(addrs))
	}
	for name, a := range addrs {
		vm := getVM(t, ns, name)
		if h := poolHolder(t, pool, a); h.ContainerID != string(vm.UID) || h.PodRef != ns+"/"+name {
			t.Errorf("%s of %s is held by %+v in the pool", a, name, h)
		}
	}
}

// 50 VMs created at once, reconciled by two controller replicas writing one
// IPPool, get 50 distinct addresses, the lowest of the range; deleting VMs
// frees theirs for the next ones.
func TestIPAMConcurrentVMsTwoReplicas(t *testing.T) {
	ns := newNamespace(t, fmt.Sprintf("ipam-conc-%d", rand.IntN(1e6)))
	pool := types.NamespacedName{Namespace: ns, Name: "overlay"}
	a := startReplica(t, ns, pool, "10.200.0.0/24")
	b := startReplica(t, ns, pool, "10.200.0.0/24")

	start := time.Now()
	createVMs(t, ns, "vm", 0, 50)
	addrs := addresses(t, ns, 50)
	took := time.Since(start)
	checkPool(t, pool, ns, addrs)
	var got []string
	for _, ip := range addrs {
		got = append(got, ip)
	}
	sort.Slice(got, func(i, j int) bool { return netip.MustParseAddr(got[i]).Less(netip.MustParseAddr(got[j])) })
	if got[0] != "10.200.0.1" || got[49] != "10.200.0.50" {
		t.Errorf("addresses %s..%s, want the lowest 50: 10.200.0.1..10.200.0.50", got[0], got[49])
	}
	t.Logf("50 VMs, 2 replicas x 4 workers: every VM with an address and a pod name after %s; %v + %v write conflicts retried",
		took.Round(time.Millisecond), a.conflicts(t), b.conflicts(t))
	if inUse, free := a.gauge(t, "vmscale_neonvm_ipam_addresses_in_use", pool), a.gauge(t, "vmscale_neonvm_ipam_addresses_free", pool); inUse != 50 || free != 204 {
		t.Errorf("pool gauges in use %v free %v, want 50 and 204", inUse, free)
	}

	// Delete every other VM: their addresses go back to the pool.
	freed := map[string]bool{}
	for i := 0; i < 50; i += 2 {
		name := fmt.Sprintf("vm-%02d", i)
		freed[addrs[name]] = true
		if err := k8sClient.Delete(context.Background(), getVM(t, ns, name)); err != nil {
			t.Fatal(err)
		}
		delete(addrs, name)
	}
	poll.Until(t, 60*time.Second, 200*time.Millisecond, "25 addresses released", func() error {
		if n := len(getPool(t, pool).Spec.Allocations); n != 25 {
			return fmt.Errorf("the pool holds %d", n)
		}
		return nil
	})
	poll.Until(t, 30*time.Second, 100*time.Millisecond, "deleted VMs gone", func() error {
		var list vmv1.VirtualMachineList
		if err := k8sClient.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(list.Items) != 25 {
			return fmt.Errorf("%d VMs", len(list.Items))
		}
		return nil
	})
	checkPool(t, pool, ns, addrs)

	// New VMs take the freed addresses, never a held one.
	createVMs(t, ns, "new", 0, 25)
	all := addresses(t, ns, 50)
	for name, ip := range all {
		if strings.HasPrefix(name, "new-") && !freed[ip] {
			t.Errorf("%s got %s, not one of the freed addresses", name, ip)
		}
		if strings.HasPrefix(name, "vm-") && addrs[name] != ip {
			t.Errorf("%s changed address %s -> %s", name, addrs[name], ip)
		}
	}
	checkPool(t, pool, ns, all)
}

// The pool is the record: after a controller restart the VMs keep their
// addresses (acquiring again changes nothing, not even the pool's
// resourceVersion), new VMs get none of theirs, and a lost pool is rebuilt
// from the VMs' statuses with the same addresses.
func TestIPAMSurvivesControllerRestart(t *testing.T) {
	ns := newNamespace(t, fmt.Sprintf("ipam-restart-%d", rand.IntN(1e6)))
	pool := types.NamespacedName{Namespace: ns, Name: "overlay"}
	first := startReplica(t, ns, pool, "10.201.0.0/24")
	createVMs(t, ns, "vm", 0, 20)
	before := addresses(t, ns, 20)
	first.stop()
	rv := getPool(t, pool).ResourceVersion

	second := startReplica(t, ns, pool, "10.201.0.0/24")
	ctx := context.Background()
	for name, ip := range before {
		got, err := second.ipam.Acquire(ctx, getVM(t, ns, name))
		if err != nil || got.IP != ip {
			t.Errorf("%s: acquired again %+v %v, want %s", name, got, err, ip)
		}
	}
	if now := getPool(t, pool).ResourceVersion; now != rv {
		t.Errorf("acquiring held addresses wrote the pool (resourceVersion %s -> %s)", rv, now)
	}
	createVMs(t, ns, "new", 0, 10)
	after := addresses(t, ns, 30)
	for name, ip := range before {
		if after[name] != ip {
			t.Errorf("%s changed address across the restart: %s -> %s", name, ip, after[name])
		}
	}
	checkPool(t, pool, ns, after)
	second.stop()

	// The pool lost (deleted by hand): acquiring for each VM, with the
	// address its status recorded, rebuilds it with the same addresses
	// even in an order that would otherwise hand them out differently.
	if err := k8sClient.Delete(ctx, getPool(t, pool)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, 50*time.Millisecond, "pool deleted", func() error {
		var p vmv1.IPPool
		if err := k8sClient.Get(ctx, pool, &p); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	names := make([]string, 0, len(after))
	for name := range after {
		names = append(names, name)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	third := startReplica(t, "no-namespace-", pool, "10.201.0.0/24")
	for _, name := range names {
		got, err := third.ipam.Acquire(ctx, getVM(t, ns, name))
		if err != nil || got.IP != after[name] {
			t.Errorf("%s: after the pool was lost got %+v %v, want %s", name, got, err, after[name])
		}
	}
	checkPool(t, pool, ns, after)
}

// A pool in the Whereabouts shape, as written by hand or by other tools,
// is stored without losing a field.
func TestIPPoolWhereaboutsShape(t *testing.T) {
	ns := newNamespace(t, "ippool-shape")
	obj := mustYAML(t, `
apiVersion: vm.neon.tech/v1
kind: IPPool
metadata: {name: overlay, namespace: ippool-shape}
spec:
  range: 10.100.0.0/16
  allocations:
    "1": {id: 0b5e4c1e-6b55-4f4e-9d7e-2f1f3b0a9c11, podref: default/db}
    "258": {id: 8c1d2e3f-0000-4a4a-9b9b-abcdefabcdef, podref: team-a/etl}
`)
	want := jsonValue(t, obj.Object["spec"])
	if err := k8sClient.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
	p := getPool(t, types.NamespacedName{Namespace: ns, Name: "overlay"})
	if got := jsonValue(t, p.Spec); !reflect.DeepEqual(got, want) {
		t.Errorf("stored spec %v, want %v", got, want)
	}
	if h := poolHolder(t, types.NamespacedName{Namespace: ns, Name: "overlay"}, "10.100.1.2"); h.PodRef != "team-a/etl" {
		t.Errorf("offset 258 is 10.100.1.2, held by %+v", h)
	}
}
