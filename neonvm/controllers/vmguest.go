package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qmp"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// guestIO is what the VM reconciler asks of a running VM: QEMU over QMP and
// neonvm-runner's HTTP API, both on the runner pod's IP.
type guestIO interface {
	Observe(ctx context.Context, vm *vmv1.VirtualMachine, mode vmv1.CPUScalingMode) (observed, error)
	PlugCPUs(ctx context.Context, vm *vmv1.VirtualMachine, n int) error
	SetRunnerCPU(ctx context.Context, vm *vmv1.VirtualMachine, cpu vmv1.MilliCPU) error
	SetMemory(ctx context.Context, vm *vmv1.VirtualMachine, requested int64) error
}

// podGuest reaches the guest at the runner pod's IP.
type podGuest struct {
	http    *http.Client
	metrics *Metrics
}

func newPodGuest(m *Metrics) *podGuest {
	// One client for every runner, so that connections are reused.
	return &podGuest{http: runnerapi.NewHTTPClient(), metrics: m}
}

func qmpAddr(vm *vmv1.VirtualMachine) string {
	port := vm.Spec.QMP
	if port == 0 {
		port = vmv1.DefaultQMPPort
	}
	return net.JoinHostPort(vm.Status.PodIP, strconv.Itoa(int(port)))
}

func (g *podGuest) runner(vm *vmv1.VirtualMachine) *runnerapi.Client {
	return runnerapi.NewClient(runnerapi.BaseURL(vm.Status.PodIP, vm.Spec.RunnerPort), g.http)
}

// qmpSession dials QEMU and runs f; every command's latency and failure is
// counted by command.
func (g *podGuest) qmpSession(ctx context.Context, vm *vmv1.VirtualMachine, f func(*timedQMP) error) error {
	if vm.Status.PodIP == "" {
		return fmt.Errorf("the runner pod has no IP yet")
	}
	start := time.Now()
	c, err := qmp.Dial(ctx, "tcp", qmpAddr(vm))
	g.metrics.observeQMP("connect", start, err)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(&timedQMP{c: c, m: g.metrics})
}

// timedQMP wraps the QMP client's calls with metrics.
type timedQMP struct {
	c *qmp.Client
	m *Metrics
}

func timed[T any](t *timedQMP, command string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	t.m.observeQMP(command, start, err)
	return v, err
}

func (g *podGuest) Observe(ctx context.Context, vm *vmv1.VirtualMachine, mode vmv1.CPUScalingMode) (observed, error) {
	o := observed{VirtioMemRequested: -1}
	cpu, err := g.runnerCPU(ctx, vm)
	if err != nil {
		return o, err
	}
	o.RunnerCPU = cpu
	err = g.qmpSession(ctx, vm, func(q *timedQMP) error {
		if mode != vmv1.CPUScalingModeSysfs {
			slots, err := timed(q, "query-hotpluggable-cpus", func() ([]qmp.HotpluggableCPU, error) { return q.c.QueryHotpluggableCPUs(ctx) })
			if err != nil {
				return err
			}
			o.PluggedCPUs = qmp.PluggedCPUs(slots)
		}
		sum, err := timed(q, "query-memory-size-summary", func() (qmp.MemorySizeSummary, error) { return q.c.QueryMemorySizeSummary(ctx) })
		if err != nil {
			return err
		}
		o.Memory = sum.Total()
		if g := vm.Spec.Guest.MemorySlots; g.Min != g.Max {
			req, err := timed(q, "qom-get", func() (int64, error) { return q.c.VirtioMemRequestedSize(ctx) })
			if err != nil {
				return err
			}
			o.VirtioMemRequested = req
		}
		return nil
	})
	return o, err
}

func (g *podGuest) PlugCPUs(ctx context.Context, vm *vmv1.VirtualMachine, n int) error {
	return g.qmpSession(ctx, vm, func(q *timedQMP) error {
		_, err := timed(q, "device_add/del", func() ([]string, error) { return q.c.SetCPUs(ctx, n) })
		return err
	})
}

func (g *podGuest) SetMemory(ctx context.Context, vm *vmv1.VirtualMachine, requested int64) error {
	return g.qmpSession(ctx, vm, func(q *timedQMP) error {
		_, err := timed(q, "qom-set", func() (struct{}, error) { return struct{}{}, q.c.SetVirtioMemRequestedSize(ctx, requested) })
		return err
	})
}

// runnerCPU is the runner's GET /cpu_current.
func (g *podGuest) runnerCPU(ctx context.Context, vm *vmv1.VirtualMachine) (vmv1.MilliCPU, error) {
	return g.runner(vm).CPUCurrent(ctx)
}

// SetRunnerCPU is the runner's POST /cpu_change.
func (g *podGuest) SetRunnerCPU(ctx context.Context, vm *vmv1.VirtualMachine, cpu vmv1.MilliCPU) error {
	return g.runner(vm).ChangeCPU(ctx, cpu)
}
