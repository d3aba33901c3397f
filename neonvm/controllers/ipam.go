package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/ipam"
)

// +kubebuilder:rbac:groups=vm.neon.tech,resources=ippools,verbs=get;list;watch;create;update

// IPAM hands out the addresses of VMs' extra network from one IPPool
// (docs/neonvm.md#network-and-ippool). The pool is the only record: every change is a
// read-modify-write of the pool guarded by its resourceVersion and retried
// on conflict, so concurrent reconciles and several controller replicas
// never hand one address out twice, and a restarted controller finds each
// VM's address where it left it.
type IPAM struct {
	client client.Client
	// reader reads the pool around the cache: a write must start from the
	// newest resourceVersion or it only conflicts.
	reader  client.Reader
	pool    types.NamespacedName
	rng     ipam.Range
	metrics *ipamMetrics
	backoff wait.Backoff
}

// Address is a VM's extra-network address as the status records it.
type Address struct {
	IP, Mask string
}

// NewIPAM hands out addresses from the IPPool pool, created with range
// rangeCIDR when it does not exist (an existing pool keeps its own range).
// reader should read around the cache (the manager's APIReader); nil uses
// c. Metrics go to reg when it is not nil.
func NewIPAM(c client.Client, reader client.Reader, pool types.NamespacedName, rangeCIDR string, reg prometheus.Registerer) (*IPAM, error) {
	rng, err := ipam.ParseRange(rangeCIDR)
	if err != nil {
		return nil, err
	}
	if pool.Namespace == "" || pool.Name == "" {
		return nil, fmt.Errorf("IPPool %q: want namespace/name", pool.String())
	}
	if reader == nil {
		reader = c
	}
	m := &IPAM{
		client: c, reader: reader, pool: pool, rng: rng,
		metrics: newIPAMMetrics(reader),
		// Writers that collide back off with jitter; ~3 s in all before
		// the reconcile gives up and is requeued.
		backoff: wait.Backoff{Steps: 25, Duration: 5 * time.Millisecond, Factor: 1.4, Jitter: 1, Cap: 250 * time.Millisecond},
	}
	if reg != nil {
		reg.MustRegister(m.metrics.requests, m.metrics.conflicts, m.metrics.pools)
	}
	return m, nil
}

// Pool is the IPPool's namespace/name.
func (m *IPAM) Pool() types.NamespacedName { return m.pool }

// allocationID is the holder id of vm's address: its UID, so a VM deleted
// and created again under the same name is a new holder.
func allocationID(vm *vmv1.VirtualMachine) string { return string(vm.UID) }

// Acquire returns vm's address, allocating one when the pool holds none
// for it: the address in vm's status when that is still free (the pool
// was lost and re-created), else the lowest free one.
func (m *IPAM) Acquire(ctx context.Context, vm *vmv1.VirtualMachine) (Address, error) {
	prefer, _ := netip.ParseAddr(vm.Status.ExtraNetIP)
	var out Address
	err := m.update(ctx, "acquire", func(rng ipam.Range, allocs map[string]vmv1.IPAllocation) (bool, error) {
		l, err := ipam.Acquire(rng, allocs, allocationID(vm), vm.Namespace+"/"+vm.Name, prefer)
		if err != nil {
			return false, err
		}
		out = Address{IP: l.Addr.String(), Mask: rng.Mask()}
		if l.New {
			log.FromContext(ctx).Info("extra-network address allocated", "pool", m.pool.String(), "address", out.IP)
		}
		return l.New, nil
	})
	return out, err
}

// Release gives back every address vm holds in the pool; a missing pool
// holds nothing.
func (m *IPAM) Release(ctx context.Context, vm *vmv1.VirtualMachine) error {
	return m.update(ctx, "release", func(_ ipam.Range, allocs map[string]vmv1.IPAllocation) (bool, error) {
		released := ipam.Release(allocs, allocationID(vm))
		if released {
			log.FromContext(ctx).Info("extra-network address released", "pool", m.pool.String(), "address", vm.Status.ExtraNetIP)
		}
		return released, nil
	})
}

// update reads the pool, lets change edit its allocations and writes it
// back if change says it changed them, retrying from the read when the
// write conflicts with another writer. A missing pool is created (by
// acquire only).
func (m *IPAM) update(ctx context.Context, op string, change func(ipam.Range, map[string]vmv1.IPAllocation) (bool, error)) error {
	err := retry.OnError(m.backoff, func(err error) bool {
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			m.metrics.conflicts.WithLabelValues(m.pool.String()).Inc()
			return true
		}
		return false
	}, func() error {
		var pool vmv1.IPPool
		err := m.reader.Get(ctx, m.pool, &pool)
		switch {
		case apierrors.IsNotFound(err):
			if op != "acquire" {
				return nil
			}
			pool = vmv1.IPPool{
				ObjectMeta: metav1.ObjectMeta{Namespace: m.pool.Namespace, Name: m.pool.Name},
				Spec:       vmv1.IPPoolSpec{Range: m.rng.String(), Allocations: map[string]vmv1.IPAllocation{}},
			}
			if _, err := change(m.rng, pool.Spec.Allocations); err != nil {
				return err
			}
			if err := m.client.Create(ctx, &pool); err != nil {
				return fmt.Errorf("create IPPool %s: %w", m.pool, err)
			}
			log.FromContext(ctx).Info("IPPool created", "pool", m.pool.String(), "range", m.rng.String())
			return nil
		case err != nil:
			return fmt.Errorf("get IPPool %s: %w", m.pool, err)
		}
		rng, err := ipam.ParseRange(pool.Spec.Range)
		if err != nil {
			return fmt.Errorf("IPPool %s: spec.range: %w", m.pool, err)
		}
		if rng != m.rng {
			log.FromContext(ctx).V(1).Info("the IPPool's own range differs from the controller's; the pool's is used",
				"pool", m.pool.String(), "poolRange", rng.String(), "flagRange", m.rng.String())
		}
		if pool.Spec.Allocations == nil {
			pool.Spec.Allocations = map[string]vmv1.IPAllocation{}
		}
		changed, err := change(rng, pool.Spec.Allocations)
		if err != nil || !changed {
			return err
		}
		if err := m.client.Update(ctx, &pool); err != nil {
			return fmt.Errorf("update IPPool %s: %w", m.pool, err)
		}
		return nil
	})
	outcome := "ok"
	switch {
	case errors.Is(err, ipam.ErrPoolFull):
		outcome = "full"
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
		outcome = "conflict"
	case err != nil:
		outcome = "error"
	}
	m.metrics.requests.WithLabelValues(op, outcome).Inc()
	return err
}

type ipamMetrics struct {
	requests  *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	pools     *poolCollector
}

func newIPAMMetrics(reader client.Reader) *ipamMetrics {
	return &ipamMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_neonvm_ipam_requests_total",
			Help: "Extra-network address acquisitions and releases, by outcome (ok, full, conflict: retries ran out, error).",
		}, []string{"op", "outcome"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmscale_neonvm_ipam_write_conflicts_total",
			Help: "IPPool writes that lost to another writer and were retried from a fresh read.",
		}, []string{"pool"}),
		pools: &poolCollector{
			reader: reader,
			inUse:  prometheus.NewDesc("vmscale_neonvm_ipam_addresses_in_use", "Addresses of an IPPool held by a VM.", []string{"pool", "range"}, nil),
			free:   prometheus.NewDesc("vmscale_neonvm_ipam_addresses_free", "Addresses of an IPPool free to hand out (network and broadcast excluded).", []string{"pool", "range"}, nil),
		},
	}
}

// poolCollector reports every IPPool's use at scrape time, read from the
// apiserver, so it is right after a restart and for pools another replica
// wrote.
type poolCollector struct {
	reader      client.Reader
	inUse, free *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.inUse; ch <- c.free }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list vmv1.IPPoolList
	if err := c.reader.List(ctx, &list); err != nil {
		return
	}
	for i := range list.Items {
		p := &list.Items[i]
		rng, err := ipam.ParseRange(p.Spec.Range)
		if err != nil {
			continue
		}
		name := p.Namespace + "/" + p.Name
		used := ipam.InUse(rng, p.Spec.Allocations)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(used), name, rng.String())
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(rng.Size()-used), name, rng.String())
	}
}
