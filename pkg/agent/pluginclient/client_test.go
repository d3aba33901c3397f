package pluginclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/plugin"
	"github.com/vmscale/vmscale/pkg/plugin/config"
	"github.com/vmscale/vmscale/pkg/plugin/permit"
)

const vectors = "../../../testdata/compat/vectors/agent-plugin"

func serverPort(t *testing.T, url string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

// TestRequestBytesEqualVectors: what the client POSTs is Neon's request
// byte for byte, to "/", as application/json.
func TestRequestBytesEqualVectors(t *testing.T) {
	for _, name := range []string{"AgentRequest-lastPermit-set", "AgentRequest-fractional", "AgentRequest-lastPermit-nil", "AgentRequest-metrics-nil"} {
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(vectors, name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var req api.AgentRequest
			if err := json.Unmarshal(want, &req); err != nil {
				t.Fatal(err)
			}
			var got []byte
			var method, path, ctype string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got, _ = io.ReadAll(r.Body)
				method, path, ctype = r.Method, r.URL.Path, r.Header.Get("Content-Type")
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"permit":{"vCPUs":1,"mem":"4Gi"}}`))
			}))
			defer srv.Close()
			host, port := serverPort(t, srv.URL)
			c := &Client{HTTP: srv.Client(), Port: port}
			resp, err := c.Request(context.Background(), host, &req)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Fatalf("body\n got %s\nwant %s", got, want)
			}
			if method != http.MethodPost || path != "/" || ctype != "application/json" {
				t.Fatalf("%s %s %s", method, path, ctype)
			}
			if resp.Permit != (api.Resources{VCPU: 1000, Mem: 4 << 30}) {
				t.Fatalf("permit %s", resp.Permit)
			}
		})
	}
}

func TestReplyErrors(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"500 text": func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "timed out waiting for updates to be processed", 500)
		},
		"not json": func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"permit":{}}`)) },
		"bad body": func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"permit":`))
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(h)
			defer srv.Close()
			host, port := serverPort(t, srv.URL)
			_, err := (&Client{HTTP: srv.Client(), Port: port}).Request(context.Background(), host, testRequest("p", api.Resources{VCPU: 250, Mem: 1 << 30}))
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func testRequest(pod string, want api.Resources) *api.AgentRequest {
	cu := api.Resources{VCPU: 250, Mem: 1 << 30}
	return &api.AgentRequest{ProtoVersion: api.CurrentPluginProto, Pod: api.PodRef{Namespace: "ns", Name: pod}, ComputeUnit: &cu, Resources: want}
}

func TestOversizedRequestRefused(t *testing.T) {
	req := testRequest(strings.Repeat("x", 1100), api.Resources{VCPU: 250, Mem: 1 << 30})
	if _, err := Encode(req); err == nil || !strings.Contains(err.Error(), "1024") {
		t.Fatalf("err %v", err)
	}
}

// vmStore applies the plugin's VM patches in memory, with the apiserver's
// JSON patch library, and feeds each write back to the plugin.
type vmStore struct {
	mu  sync.Mutex
	vms map[string]*vmv1.VirtualMachine
	on  func(*vmv1.VirtualMachine)
}

func (s *vmStore) PatchVM(_ context.Context, ns, name string, patch []byte) (*vmv1.VirtualMachine, error) {
	s.mu.Lock()
	vm := s.vms[ns+"/"+name]
	if vm == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("VM %s/%s not found", ns, name)
	}
	doc, _ := json.Marshal(vm)
	p, err := jsonpatch.DecodePatch(patch)
	if err == nil {
		doc, err = p.Apply(doc)
	}
	var out vmv1.VirtualMachine
	if err == nil {
		err = json.Unmarshal(doc, &out)
	}
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	out.ResourceVersion = strconv.Itoa(len(vm.ResourceVersion) + 1)
	s.vms[ns+"/"+name] = out.DeepCopy()
	s.mu.Unlock()
	s.on(out.DeepCopy())
	return &out, nil
}

func (s *vmStore) GetVM(_ context.Context, ns, name string) (*vmv1.VirtualMachine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm := s.vms[ns+"/"+name]
	if vm == nil {
		return nil, fmt.Errorf("VM %s/%s not found", ns, name)
	}
	return vm.DeepCopy(), nil
}

func (s *vmStore) CreateMigration(context.Context, *vmv1.VirtualMachineMigration) error { return nil }
func (s *vmStore) DeleteMigration(context.Context, string, string) error                { return nil }

// TestAgainstRealPermitServer runs the plugin's permit HTTP handler with
// its real Enforcer (a 2-CPU / 8 GiB node, one VM) and asks it for more
// than fits: the permit is capped at the node's capacity; an unknown pod is
// a 404 whose message reaches the caller.
func TestAgainstRealPermitServer(t *testing.T) {
	store := &vmStore{vms: map[string]*vmv1.VirtualMachine{}}
	cfg := config.Default()
	cfg.Scoring.Randomize = false
	e := plugin.NewEnforcer(cfg, slog.New(slog.DiscardHandler), clock.RealClock{}, store, plugin.NewMetrics(nil))
	store.on = e.OnVM
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	e.OnNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("8Gi")}}})
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", ResourceVersion: "1"}}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 4000, Use: 250}
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 16, Use: 1}
	vm.Spec.Guest.MemorySlotSize = resource.MustParse("1Gi")
	vm.Status.PodName = "vm-pod"
	store.vms["ns/vm"] = vm.DeepCopy()
	e.OnVM(vm.DeepCopy())
	res, _ := json.Marshal(map[string]any{"cpus": vm.Spec.Guest.CPUs, "memorySlots": vm.Spec.Guest.MemorySlots, "memorySlotSize": "1Gi"})
	e.OnPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm-pod", CreationTimestamp: metav1.Now(),
		Labels:      map[string]string{vmv1.VirtualMachineNameLabel: "vm"},
		Annotations: map[string]string{vmv1.VirtualMachineResourcesAnnotation: string(res)}},
		Spec: corev1.PodSpec{NodeName: "n"}})
	e.Start(ctx, 2)

	srv := httptest.NewServer(&permit.Handler{Backend: e, Log: slog.New(slog.DiscardHandler)})
	defer srv.Close()
	host, port := serverPort(t, srv.URL)
	c := &Client{HTTP: &http.Client{Timeout: 5 * time.Second}, Port: port}

	got, err := c.Request(ctx, host, testRequest("vm-pod", api.Resources{VCPU: 1000, Mem: 4 << 30}))
	if err != nil {
		t.Fatal(err)
	}
	if got.Permit != (api.Resources{VCPU: 1000, Mem: 4 << 30}) {
		t.Fatalf("permit %s, want 1 vCPU/4Gi", got.Permit)
	}
	last := got.Permit
	req := testRequest("vm-pod", api.Resources{VCPU: 4000, Mem: 16 << 30})
	req.LastPermit = &last
	got, err = c.Request(ctx, host, req)
	if err != nil {
		t.Fatal(err)
	}
	if got.Permit.AnyAbove(api.Resources{VCPU: 2000, Mem: 8 << 30}) || !last.FitsIn(got.Permit) {
		t.Fatalf("permit %s past the node's 2 CPU / 8Gi or below the last permit", got.Permit)
	}
	_, err = c.Request(ctx, host, testRequest("nope", api.Resources{VCPU: 250, Mem: 1 << 30}))
	var se *StatusError
	if !asStatus(err, &se) || se.Status != http.StatusNotFound || se.Msg == "" {
		t.Fatalf("unknown pod: %v", err)
	}
}

func asStatus(err error, se **StatusError) bool {
	e, ok := err.(*StatusError)
	if ok {
		*se = e
	}
	return ok
}

func TestFinderPicksReadyScheduler(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	pod := func(name, ip string, ready bool, age time.Duration, labels map[string]string) *corev1.Pod {
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: SchedulerNamespace, Name: name, Labels: labels,
			CreationTimestamp: metav1.NewTime(time.Now().Add(-age))},
			Status: corev1.PodStatus{PodIP: ip, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}}}
	}
	sched := map[string]string{"name": "autoscale-scheduler"}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(
		pod("not-ready", "10.0.0.1", false, time.Hour, sched),
		pod("other", "10.0.0.2", true, time.Hour, map[string]string{"name": "default-scheduler"}),
		pod("new", "10.0.0.4", true, time.Minute, sched),
		pod("old", "10.0.0.3", true, 2*time.Minute, sched),
	).Build()
	f := &Finder{Reader: c, SchedulerName: "autoscale-scheduler"}
	ip, err := f.SchedulerIP(context.Background())
	if err != nil || ip != "10.0.0.3" {
		t.Fatalf("ip %q, %v; want the oldest ready one, 10.0.0.3", ip, err)
	}
	f.SchedulerName = "missing"
	if _, err := f.SchedulerIP(context.Background()); err == nil {
		t.Fatal("found a scheduler that does not exist")
	}
}

func TestFinderRemembersForAWhile(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: SchedulerNamespace, Name: "s", Labels: map[string]string{"name": "autoscale-scheduler"}},
		Status: corev1.PodStatus{PodIP: "10.0.0.9", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(p).Build()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := &Finder{Reader: c, SchedulerName: "autoscale-scheduler", CacheFor: time.Second, Now: func() time.Time { return now }}
	ctx := context.Background()
	if ip, err := f.SchedulerIP(ctx); err != nil || ip != "10.0.0.9" {
		t.Fatalf("%q %v", ip, err)
	}
	if err := c.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	if ip, err := f.SchedulerIP(ctx); err != nil || ip != "10.0.0.9" {
		t.Fatalf("within the second: %q %v", ip, err)
	}
	now = now.Add(time.Second)
	if _, err := f.SchedulerIP(ctx); err == nil {
		t.Fatal("a gone scheduler still found after the second")
	}
	f.Forget()
}

// TestSlotsBoundConcurrency: with one slot, requests never overlap.
func TestSlotsBoundConcurrency(t *testing.T) {
	var mu sync.Mutex
	inflight, most := 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		inflight++
		most = max(most, inflight)
		mu.Unlock()
		time.Sleep(5 * time.Millisecond) // hold the request open; not synchronisation
		mu.Lock()
		inflight--
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"permit":{"vCPUs":"250m","mem":"1Gi"}}`))
	}))
	defer srv.Close()
	host, port := serverPort(t, srv.URL)
	c := &Client{HTTP: srv.Client(), Port: port, Slots: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := c.Request(context.Background(), host, testRequest("p", api.Resources{VCPU: 250, Mem: 1 << 30})); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d requests in flight at once with one slot", most)
	}
}
