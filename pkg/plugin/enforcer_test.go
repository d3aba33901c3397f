package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
	"github.com/vmscale/vmscale/pkg/plugin/state"
)

const gi = api.Bytes(1 << 30)

// fakeCluster is an in-memory apiserver for VMs: JSON patches are applied
// with the apiserver's own library (so `test` guards behave the same), and
// every write is fed back to the enforcer as a watch event would be.
type fakeCluster struct {
	mu         sync.Mutex
	rv         int
	vms        map[string]*vmv1.VirtualMachine
	migrations map[string]*vmv1.VirtualMachineMigration
	patches    int
	failPatch  error
	onWrite    func(*vmv1.VirtualMachine)
	// gate, if set, holds every patch until it is closed; inPatch counts
	// the patches being held.
	gate    chan struct{}
	inPatch int
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{vms: map[string]*vmv1.VirtualMachine{}, migrations: map[string]*vmv1.VirtualMachineMigration{}}
}

func (f *fakeCluster) put(vm *vmv1.VirtualMachine) *vmv1.VirtualMachine {
	f.rv++
	vm.ResourceVersion = strconv.Itoa(f.rv)
	f.vms[vm.Namespace+"/"+vm.Name] = vm.DeepCopy()
	return vm.DeepCopy()
}

func (f *fakeCluster) PatchVM(_ context.Context, ns, name string, patch []byte) (*vmv1.VirtualMachine, error) {
	f.mu.Lock()
	if gate := f.gate; gate != nil {
		f.inPatch++
		f.mu.Unlock()
		<-gate
		f.mu.Lock()
		f.inPatch--
	}
	if f.failPatch != nil {
		f.mu.Unlock()
		return nil, f.failPatch
	}
	f.patches++
	vm := f.vms[ns+"/"+name]
	if vm == nil {
		f.mu.Unlock()
		return nil, fmt.Errorf("not found")
	}
	doc, _ := json.Marshal(vm)
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		f.mu.Unlock()
		return nil, err
	}
	out, err := p.Apply(doc)
	if err != nil {
		f.mu.Unlock()
		return nil, fmt.Errorf("%w: the server rejected our request due to an error in our request: %w", ErrPatchConflict, err)
	}
	var res vmv1.VirtualMachine
	if err := json.Unmarshal(out, &res); err != nil {
		f.mu.Unlock()
		return nil, err
	}
	stored := f.put(&res)
	onWrite := f.onWrite
	f.mu.Unlock()
	if onWrite != nil {
		onWrite(stored.DeepCopy())
	}
	return stored, nil
}

func (f *fakeCluster) GetVM(_ context.Context, ns, name string) (*vmv1.VirtualMachine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm := f.vms[ns+"/"+name]
	if vm == nil {
		return nil, fmt.Errorf("not found")
	}
	return vm.DeepCopy(), nil
}

// edit changes a stored VM behind the plugin's back (no watch event).
func (f *fakeCluster) edit(ns, name string, mod func(*vmv1.VirtualMachine)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm := f.vms[ns+"/"+name].DeepCopy()
	mod(vm)
	f.put(vm)
}

func (f *fakeCluster) CreateMigration(_ context.Context, m *vmv1.VirtualMachineMigration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.migrations[m.Namespace+"/"+m.Name] = m.DeepCopy()
	return nil
}

func (f *fakeCluster) DeleteMigration(_ context.Context, ns, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.migrations, ns+"/"+name)
	return nil
}

func testConfig() config.Config {
	c := config.Default()
	c.Scoring.Randomize = false
	return c
}

type fixture struct {
	t  *testing.T
	e  *Enforcer
	fc *fakeCluster
}

func newFixture(t *testing.T, start bool) *fixture {
	fc := newFakeCluster()
	e := NewEnforcer(testConfig(), slog.New(slog.DiscardHandler), clock.RealClock{}, fc, NewMetrics(nil))
	fc.onWrite = e.OnVM
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &fixture{t: t, e: e, fc: fc}
	if start {
		e.Start(ctx, 4)
	}
	return f
}

func (f *fixture) node(name string, milli int64, mem api.Bytes) {
	f.e.OnNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
		corev1.ResourceCPU: *resource.NewMilliQuantity(milli, resource.DecimalSI), corev1.ResourceMemory: *resource.NewQuantity(int64(mem), resource.BinarySI),
	}}})
}

// vm creates a VM using `use` CPUs (milli) and slots of 1Gi, and its bound
// runner pod.
func (f *fixture) vm(name, node string, milli uint32, slots int32, labels map[string]string) {
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: labels}}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 8000, Use: vmv1.MilliCPU(milli)}
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 32, Use: slots}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Status.PodName = name + "-pod"
	f.fc.mu.Lock()
	stored := f.fc.put(vm)
	f.fc.mu.Unlock()
	f.e.OnVM(stored)
	podLabels := map[string]string{vmv1.VirtualMachineNameLabel: name}
	for k, v := range labels {
		podLabels[k] = v
	}
	res, _ := json.Marshal(map[string]any{"cpus": vm.Spec.Guest.CPUs, "memorySlots": vm.Spec.Guest.MemorySlots, "memorySlotSize": "1Gi"})
	f.e.OnPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name + "-pod", Labels: podLabels,
			Annotations:       map[string]string{vmv1.VirtualMachineResourcesAnnotation: string(res)},
			CreationTimestamp: metav1.Now()},
		Spec: corev1.PodSpec{NodeName: node},
	})
}

var unit = api.Resources{VCPU: 250, Mem: gi}

func request(pod string, want api.Resources, last *api.Resources) *api.AgentRequest {
	u := unit
	return &api.AgentRequest{ProtoVersion: 7, Pod: api.PodRef{Namespace: "ns", Name: pod}, ComputeUnit: &u, Resources: want, LastPermit: last}
}

func r(milli uint32, mem api.Bytes) api.Resources {
	return api.Resources{VCPU: vmv1.MilliCPU(milli), Mem: mem}
}

func (f *fixture) annotations(vm string) map[string]string {
	f.fc.mu.Lock()
	defer f.fc.mu.Unlock()
	return f.fc.vms["ns/"+vm].Annotations
}

func statusOf(err error) int {
	var pe *permit.Error
	if errors.As(err, &pe) {
		return pe.Status
	}
	if err != nil {
		return 500
	}
	return 200
}

func TestPermitFlowGrantsAndRecords(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 4000, 16*gi)
	f.vm("a", "n", 1000, 4, nil)
	start := time.Now()
	got, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), &api.Resources{VCPU: 1000, Mem: 4 * gi}))
	if err != nil || got != r(2000, 8*gi) {
		t.Fatalf("permit %v, %v", got, err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Fatalf("a grantable upscale took %s (the 1 s wait should end on the decision)", el)
	}
	if f.fc.patches != 1 {
		t.Fatalf("an upscale took %d VM writes, want 1 (request and approval together)", f.fc.patches)
	}
	ann := f.annotations("a")
	if ann[api.RequestedAnnotation] != `{"vCPUs":2,"mem":"8Gi"}` || ann[api.ApprovedAnnotation] != `{"vCPUs":2,"mem":"8Gi"}` ||
		ann[api.ScalingUnitAnnotation] != `{"vCPUs":"250m","mem":"1Gi"}` {
		t.Fatalf("annotations %v", ann)
	}
	// A steady request within the last permit: answered with no write.
	before := f.fc.patches
	last := r(2000, 8*gi)
	got, err = f.e.Permit(context.Background(), request("a-pod", last, &last))
	if err != nil || got != last || f.fc.patches != before {
		t.Fatalf("steady: %v %v, %d patches", got, err, f.fc.patches-before)
	}
}

func TestPermitCappedAtFreeCapacity(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	f.vm("a", "n", 1000, 4, nil)
	f.vm("b", "n", 500, 2, nil)
	// Free: 500m and 2Gi; the request is for 2 vCPU / 8Gi total.
	got, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), nil))
	if err != nil {
		t.Fatal(err)
	}
	if got != r(1500, 6*gi) {
		t.Fatalf("permit %v, want 1500m/6Gi (whole units up to the free capacity)", got)
	}
	n, _ := f.e.st.Node("n")
	if n.CPU.Reserved != 2000 || n.Mem.Reserved != uint64(8*gi) {
		t.Fatalf("node reserved %d/%d", n.CPU.Reserved, n.Mem.Reserved)
	}
	// Node full: an upscale gets what it had, without waiting the full second.
	start := time.Now()
	got, err = f.e.Permit(context.Background(), request("b-pod", r(1000, 4*gi), &api.Resources{VCPU: 500, Mem: 2 * gi}))
	if err != nil || got != r(500, 2*gi) {
		t.Fatalf("full node: %v %v", got, err)
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Fatal("refusal waited for the timeout")
	}
	// Downscaling a frees room; b's pending request is granted by the workers.
	if _, err := f.e.Permit(context.Background(), request("a-pod", r(1000, 4*gi), &got)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b granted after a shrank", func() bool {
		return f.annotations("b")[api.ApprovedAnnotation] == `{"vCPUs":1,"mem":"4Gi"}`
	})
}

func TestConcurrentAgentsNeverOvercommit(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 4000, 16*gi)
	for i := 0; i < 8; i++ {
		f.vm(fmt.Sprintf("v%d", i), "n", 250, 1, nil)
	}
	var wg sync.WaitGroup
	permits := make([]api.Resources, 8)
	for round := 0; round < 5; round++ {
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				last := permits[i]
				var lp *api.Resources
				if !last.IsZero() {
					lp = &last
				}
				got, err := f.e.Permit(context.Background(), request(fmt.Sprintf("v%d-pod", i), r(2000, 8*gi), lp))
				if err != nil {
					t.Errorf("v%d: %v", i, err)
					return
				}
				permits[i] = got
			}(i)
		}
		wg.Wait()
	}
	var cpu, mem uint64
	for i, p := range permits {
		cpu += uint64(p.VCPU)
		mem += uint64(p.Mem)
		if p.VCPU%250 != 0 || p.Mem%gi != 0 {
			t.Fatalf("v%d permit %v is not whole units", i, p)
		}
	}
	if cpu > 4000 || mem > uint64(16*gi) {
		t.Fatalf("permits sum to %dm / %d bytes on a 4000m/16Gi node", cpu, mem)
	}
	n, _ := f.e.st.Node("n")
	if n.OverBudget() || n.CPU.Reserved != 4000 {
		t.Fatalf("node %+v (every agent wants more, so the node should be full)", n.CPU)
	}
}

func TestPermitErrors(t *testing.T) {
	f := newFixture(t, false)
	f.node("n", 4000, 16*gi)
	f.vm("a", "n", 1000, 4, nil)
	// Before startup completes: refused, nothing written.
	_, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), nil))
	if statusOf(err) != http.StatusInternalServerError || f.fc.patches != 0 {
		t.Fatalf("before startup: %v, %d patches", err, f.fc.patches)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.e.Start(ctx, 2)
	f.e.OnPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain"}, Spec: corev1.PodSpec{NodeName: "n"}})
	f.e.OnPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pending", Labels: map[string]string{vmv1.VirtualMachineNameLabel: "a"}}})
	for _, c := range []struct {
		pod    string
		status int
	}{{"nope", 404}, {"pending", 404}, {"plain", 400}} {
		if _, err := f.e.Permit(context.Background(), request(c.pod, r(2000, 8*gi), nil)); statusOf(err) != c.status {
			t.Errorf("%s: %v, want %d", c.pod, err, c.status)
		}
	}
	f.fc.mu.Lock()
	f.fc.failPatch = errors.New("apiserver down")
	f.fc.mu.Unlock()
	if _, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), nil)); statusOf(err) != 500 {
		t.Fatalf("patch failure: %v", err)
	}
}

// With the approval never written (another write stays in flight), the
// agent waits the full second and gets 500.
func TestPermitTimesOut(t *testing.T) {
	f := newFixture(t, false)
	f.node("n", 4000, 16*gi)
	f.vm("a", "n", 1000, 4, nil)
	f.e.mu.Lock()
	f.e.ready = true // ready, but no worker runs and a write is in flight
	stuck := r(1000, 4*gi)
	f.e.vms[vmKey{"ns", "a"}].inflight = &stuck
	f.e.mu.Unlock()
	start := time.Now()
	_, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), nil))
	el := time.Since(start)
	if err == nil || err.Error() != "timed out waiting for updates to be processed" {
		t.Fatalf("err %v", err)
	}
	if el < 900*time.Millisecond || el > 3*time.Second {
		t.Fatalf("waited %s, want about 1 s", el)
	}
}

// Restart: a new enforcer fed the same cluster holds the same reservations
// and does not grant twice.
func TestRestartKeepsReservations(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	f.vm("a", "n", 1000, 4, nil)
	if _, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), nil)); err != nil {
		t.Fatal(err)
	}
	g := newFixture(t, false)
	g.fc = f.fc
	g.e.client = f.fc
	g.node("n", 2000, 8*gi)
	f.fc.mu.Lock()
	vm := f.fc.vms["ns/a"].DeepCopy()
	f.fc.mu.Unlock()
	g.e.OnVM(vm)
	g.e.OnPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-pod", Labels: map[string]string{vmv1.VirtualMachineNameLabel: "a"}}, Spec: corev1.PodSpec{NodeName: "n"}})
	n, _ := g.e.st.Node("n")
	if n.CPU.Reserved != 2000 || n.Mem.Reserved != uint64(8*gi) {
		t.Fatalf("after restart node holds %d/%d", n.CPU.Reserved, n.Mem.Reserved)
	}
	// A new VM on the full node gets no more than its size.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.e.Start(ctx, 2)
	f.fc.onWrite = g.e.OnVM
	g.vm("b", "n", 250, 1, nil)
	got, err := g.e.Permit(context.Background(), request("b-pod", r(1000, 4*gi), nil))
	if err != nil || got != r(250, gi) {
		t.Fatalf("second VM on a full node: %v %v", got, err)
	}
}

func TestMigrationPastWatermark(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 4000, 16*gi)
	mig := map[string]string{api.AutoMigrationLabel: "true"}
	f.vm("old", "n", 1000, 2, mig)
	f.vm("young", "n", 1000, 2, mig)
	f.vm("pinned", "n", 1000, 2, nil)
	if len(f.fc.migrations) != 0 {
		t.Fatal("migrated below the watermark")
	}
	// 3000m → 4000m: past 0.9×4000.
	if _, err := f.e.Permit(context.Background(), request("pinned-pod", r(2000, 2*gi), nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "migration created", func() bool {
		f.fc.mu.Lock()
		defer f.fc.mu.Unlock()
		return len(f.fc.migrations) > 0
	})
	f.fc.mu.Lock()
	m := f.fc.migrations["ns/schedplugin-old-pod"]
	n := len(f.fc.migrations)
	f.fc.mu.Unlock()
	if m == nil || n != 1 || m.Spec.VMName != "old" {
		t.Fatalf("migrations %v", f.fc.migrations)
	}
	// While it runs, old's share counts as migrating, so nothing more is
	// picked even when the node is asked again.
	f.e.OnMigration(m)
	f.e.mu.Lock()
	node, _ := f.e.st.Node("n")
	migrating := node.CPU.Migrating
	f.e.mu.Unlock()
	if migrating != 1000 {
		t.Fatalf("migrating %dm, want old's 1000m", migrating)
	}
	if err := f.e.rebalanceNode(context.Background(), "n"); err != nil {
		t.Fatal(err)
	}
	f.fc.mu.Lock()
	n = len(f.fc.migrations)
	f.fc.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d migrations after a second look, want 1", n)
	}
	// It finishes: the VM left with its source pod, and the plugin deletes
	// the migration and picks no other VM (the node is under its
	// watermark again).
	f.e.OnPodDelete(state.PodKey{Namespace: "ns", Name: "old-pod"})
	m.Status.Phase = vmv1.VmmSucceeded
	f.e.OnMigration(m)
	waitFor(t, "finished migration deleted", func() bool {
		f.fc.mu.Lock()
		defer f.fc.mu.Unlock()
		return len(f.fc.migrations) == 0
	})
	if err := f.e.rebalanceNode(context.Background(), "n"); err != nil {
		t.Fatal(err)
	}
	f.fc.mu.Lock()
	n = len(f.fc.migrations)
	f.fc.mu.Unlock()
	f.e.mu.Lock()
	migrating = node.CPU.Migrating
	f.e.mu.Unlock()
	if n != 0 || migrating != 0 {
		t.Fatalf("after the migration: %d migrations, %dm migrating", n, migrating)
	}
}

func TestFilterAndReserve(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	f.vm("a", "n", 1500, 4, nil)
	e := f.e
	e.mu.Lock()
	cand := e.podForFilterLocked(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("600m")}}}}}})
	held := e.st.PodsOn("n")
	e.mu.Unlock()
	if state.FitsIn(r(2000, 8*gi), held, cand) {
		t.Fatal("600m fits next to 1500m on 2000m")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An agent whose last permit claims more than its VM holds (stale or
// forged) does not get it: the request goes through the grant rule.
func TestLastPermitNeverRaisesTheApproval(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	f.vm("a", "n", 1000, 4, nil)
	f.vm("b", "n", 1000, 4, nil) // the node is full
	claim := r(2000, 8*gi)
	got, err := f.e.Permit(context.Background(), request("a-pod", claim, &claim))
	if err != nil || got != r(1000, 4*gi) {
		t.Fatalf("permit %v, %v; want the 1 vCPU / 4Gi the VM holds", got, err)
	}
	if n, _ := f.e.st.Node("n"); n.OverBudget() {
		t.Fatalf("node over budget: %+v", n.CPU)
	}
	if ann := f.annotations("a"); ann[api.ApprovedAnnotation] != `{"vCPUs":1,"mem":"4Gi"}` {
		t.Fatalf("approval %q", ann[api.ApprovedAnnotation])
	}
	// Asked again: answered from memory, no write.
	before := f.fc.patches
	if got, err := f.e.Permit(context.Background(), request("a-pod", claim, &claim)); err != nil || got != r(1000, 4*gi) || f.fc.patches != before {
		t.Fatalf("repeat: %v %v, %d writes", got, err, f.fc.patches-before)
	}
}

// The plugin's view is behind (someone wrote the VM and the watch has not
// told it yet): the guarded write fails, the plugin re-reads the VM and
// answers from the fresh state.
func TestStaleViewRecovers(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 4000, 16*gi)
	f.vm("a", "n", 1000, 4, nil)
	f.fc.edit("ns", "a", func(vm *vmv1.VirtualMachine) {
		vm.Annotations = map[string]string{
			api.ScalingUnitAnnotation: `{"vCPUs":"250m","mem":"1Gi"}`,
			api.RequestedAnnotation:   `{"vCPUs":"1500m","mem":"6Gi"}`,
			api.ApprovedAnnotation:    `{"vCPUs":1,"mem":"4Gi"}`,
		}
	})
	got, err := f.e.Permit(context.Background(), request("a-pod", r(2000, 8*gi), &api.Resources{VCPU: 1000, Mem: 4 * gi}))
	if err != nil || got != r(2000, 8*gi) {
		t.Fatalf("permit %v, %v", got, err)
	}
	if ann := f.annotations("a"); ann[api.RequestedAnnotation] != `{"vCPUs":2,"mem":"8Gi"}` || ann[api.ApprovedAnnotation] != `{"vCPUs":2,"mem":"8Gi"}` {
		t.Fatalf("annotations %v", ann)
	}
}

// The permit path has at most MaxRequestPatches VM writes in flight; the
// rest wait for a slot within their deadline and go through once one frees.
func TestRequestPatchesBounded(t *testing.T) {
	f := newFixture(t, true)
	n := MaxRequestPatches + 4
	for i := 0; i < n; i++ {
		node := fmt.Sprintf("node-%d", i/4)
		if i%4 == 0 {
			f.node(node, 8000, 32*gi)
		}
		f.vm(fmt.Sprintf("vm-%d", i), node, 250, 1, nil)
	}
	gate := make(chan struct{})
	f.fc.mu.Lock()
	f.fc.gate = gate
	f.fc.mu.Unlock()
	inPatch := func() int {
		f.fc.mu.Lock()
		defer f.fc.mu.Unlock()
		return f.fc.inPatch
	}
	last := r(250, gi)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			got, err := f.e.Permit(context.Background(), request(fmt.Sprintf("vm-%d-pod", i), r(500, 2*gi), &last))
			if err == nil && got != r(500, 2*gi) {
				err = fmt.Errorf("vm-%d: permit %v", i, got)
			}
			errs <- err
		}(i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for inPatch() < MaxRequestPatches && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if got := inPatch(); got != MaxRequestPatches {
		t.Fatalf("%d VM patches in flight; want %d", got, MaxRequestPatches)
	}
	// One more, with a deadline shorter than the held writes: it fails
	// without ever reaching the apiserver.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	f.node("node-extra", 8000, 32*gi)
	f.vm("vm-extra", "node-extra", 250, 1, nil)
	if _, err := f.e.Permit(ctx, request("vm-extra-pod", r(500, 2*gi), &last)); err == nil || !strings.Contains(err.Error(), "write slots") {
		t.Fatalf("upscale with no free write slot: %v; want a wait for a slot to time out", err)
	}
	close(gate)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := inPatch(); got != 0 {
		t.Fatalf("%d patches still held", got)
	}
}
