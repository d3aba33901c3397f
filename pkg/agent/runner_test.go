package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent/pluginclient"
	"github.com/vmscale/vmscale/pkg/agent/vminfo"
	"github.com/vmscale/vmscale/pkg/agent/vmpatch"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/tests/poll"
)

// TestRunnerFlagsStuckPlugin: a plugin that keeps failing marks the VM
// stuck once failures pass maxFailedRequestRate, and the requests it got
// name the runner pod and carry the configured compute unit.
func TestRunnerFlagsStuckPlugin(t *testing.T) {
	var mu sync.Mutex
	var bodies []api.AgentRequest
	plugin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var req api.AgentRequest
		_ = json.Unmarshal(raw, &req)
		mu.Lock()
		bodies = append(bodies, req)
		mu.Unlock()
		http.Error(w, "timed out waiting for updates to be processed", http.StatusInternalServerError)
	}))
	defer plugin.Close()
	_, portS, _ := net.SplitHostPort(strings.TrimPrefix(plugin.URL, "http://"))
	port, _ := strconv.Atoi(portS)

	cfg, err := ParseConfig([]byte(shippedConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Scheduler.RequestPort = uint16(port)
	cfg.Scheduler.RetryFailedRequestSeconds = 1
	cfg.Scheduler.MaxFailedRequestRate = FailedRequestRate{IntervalSeconds: 60, Threshold: 1}

	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	_ = vmv1.AddToScheme(scheme)
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", Labels: map[string]string{api.EnabledLabel: "true"}}}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 1000, Use: 250}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 4, Use: 1}
	// The VM's own endpoints are on a loopback address nothing listens on.
	vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmRunning, PodName: "vm-pod", PodIP: "127.0.0.77", Node: "n"}
	sched := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "s", Labels: map[string]string{"name": "autoscale-scheduler"}},
		Status: corev1.PodStatus{PodIP: "127.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(vm.DeepCopy(), sched).Build()

	metrics := NewMetrics(nil)
	d := &deps{cfg: cfg, core: cfg.Core(), defaults: cfg.DefaultScaling(), clk: clock.RealClock{},
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		plugin:  &pluginclient.Client{HTTP: &http.Client{Timeout: 5 * time.Second}, Port: port},
		finder:  &pluginclient.Finder{Reader: c, SchedulerName: "autoscale-scheduler"},
		patcher: &vmpatch.Patcher{Client: c}, metrics: metrics}
	info, err := vminfo.Extract(vm, d.defaults)
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(d, vm, info)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctx) }()

	poll.Until(t, 10*time.Second, 20*time.Millisecond, "VM flagged stuck on the plugin", func() error {
		if v := testutil.ToFloat64(metrics.StuckVMs.WithLabelValues("plugin")); v != 1 {
			return fmt.Errorf("stuck gauge %v", v)
		}
		return nil
	})
	mu.Lock()
	first := bodies[0]
	mu.Unlock()
	if first.Pod != (api.PodRef{Namespace: "ns", Name: "vm-pod"}) || first.ComputeUnit == nil ||
		*first.ComputeUnit != (api.Resources{VCPU: 250, Mem: 1 << 30}) || first.ProtoVersion != api.CurrentPluginProto ||
		first.Resources != (api.Resources{VCPU: 250, Mem: 1 << 30}) || first.LastPermit != nil {
		t.Fatalf("first plugin request %+v", first)
	}
	// Failures are retried 1 s apart, not in a loop.
	mu.Lock()
	n := len(bodies)
	mu.Unlock()
	if n > 4 {
		t.Fatalf("%d plugin requests before the VM was flagged, want a few, 1 s apart", n)
	}
	cancel()
	<-done
	if v := testutil.ToFloat64(metrics.StuckVMs.WithLabelValues("plugin")); v != 0 {
		t.Fatalf("stuck gauge %v after the runner stopped", v)
	}
}
