package plugin

import (
	"context"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/vmscale/vmscale/pkg/plugin/state"
)

// Fakes with just what the hooks read; anything else panics.
type fakeNodeInfo struct {
	fwk.NodeInfo
	node  *corev1.Node
	pods  []fwk.PodInfo
	alloc fakeResource
}

func (n fakeNodeInfo) Node() *corev1.Node           { return n.node }
func (n fakeNodeInfo) GetPods() []fwk.PodInfo       { return n.pods }
func (n fakeNodeInfo) GetAllocatable() fwk.Resource { return n.alloc }

type fakeResource struct {
	fwk.Resource
	milli, mem int64
}

func (r fakeResource) GetMilliCPU() int64 { return r.milli }
func (r fakeResource) GetMemory() int64   { return r.mem }

type fakePodInfo struct {
	fwk.PodInfo
	pod *corev1.Pod
}

func (p fakePodInfo) GetPod() *corev1.Pod { return p.pod }

func plainPod(name, cpu, mem string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.PodSpec{SchedulerName: "autoscale-scheduler", Containers: []corev1.Container{{
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}}}}},
	}
}

func TestHooks(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	f.vm("a", "n", 1000, 4, nil) // holds 1 vCPU / 4Gi on n
	cfg := testConfig()
	p := &AutoscaleEnforcer{e: f.e, cfg: cfg, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	var aPod corev1.Pod
	aPod.Namespace, aPod.Name = "ns", "a-pod"
	aPod.Labels = map[string]string{"vm.neon.tech/name": "a"}
	ni := fakeNodeInfo{node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}},
		pods: []fwk.PodInfo{fakePodInfo{pod: &aPod}}, alloc: fakeResource{milli: 2000, mem: int64(8 * gi)}}

	if st := p.Filter(ctx, nil, plainPod("fits", "1", "4Gi"), ni); !st.IsSuccess() {
		t.Fatalf("exact fit filtered: %v", st)
	}
	st := p.Filter(ctx, nil, plainPod("big", "1100m", "1Gi"), ni)
	if st.Code() != fwk.Unschedulable || st.Message() != "Not enough resources for Pod" {
		t.Fatalf("overfull node: %v", st)
	}
	other := plainPod("other", "100m", "1Mi")
	other.Spec.SchedulerName = "default-scheduler"
	if st := p.Filter(ctx, nil, other, ni); st.Code() != fwk.Error {
		t.Fatalf("foreign scheduler name: %v", st)
	}

	// Score: a fitting pod scores >0, an overfull one 0.
	if s, _ := p.Score(ctx, nil, plainPod("fits", "500m", "1Gi"), ni); s <= 0 || s > 100 {
		t.Fatalf("score %d", s)
	}
	if s, _ := p.Score(ctx, nil, plainPod("big", "1500m", "1Gi"), ni); s != 0 {
		t.Fatalf("overfull score %d", s)
	}

	// Reserve holds capacity tentatively; Unreserve gives it back.
	pod := plainPod("new", "500m", "2Gi")
	if st := p.Reserve(ctx, nil, pod, "n"); !st.IsSuccess() {
		t.Fatal(st)
	}
	n, _ := f.e.st.Node("n")
	if n.CPU.Reserved != 1500 {
		t.Fatalf("after Reserve: %d", n.CPU.Reserved)
	}
	// A pod the watch shows bound here: a repeated attempt holds nothing more.
	if st := p.Reserve(ctx, nil, plainPod("a-pod", "1", "1Gi"), "n"); !st.IsSuccess() {
		t.Fatalf("Reserve of a pod bound to the same node: %v", st)
	}
	if n.CPU.Reserved != 1500 {
		t.Fatalf("after a repeated Reserve: %d", n.CPU.Reserved)
	}
	// Bound elsewhere: refused, and the pod keeps its place.
	f.node("m", 2000, 8*gi)
	if st := p.Reserve(ctx, nil, plainPod("a-pod", "1", "1Gi"), "m"); st.IsSuccess() {
		t.Fatal("Reserve on m of a pod bound to n succeeded")
	}
	p.Unreserve(ctx, nil, plainPod("a-pod", "1", "1Gi"), "m")
	if m, _ := f.e.st.Node("m"); n.CPU.Reserved != 1500 || m.CPU.Reserved != 0 {
		t.Fatalf("after a refused Reserve: n %d, m %d", n.CPU.Reserved, m.CPU.Reserved)
	}
	p.Unreserve(ctx, nil, pod, "n")
	if n.CPU.Reserved != 1000 {
		t.Fatalf("after Unreserve: %d", n.CPU.Reserved)
	}
	p.Unreserve(ctx, nil, pod, "n") // idempotent
	// Reserve past the budget is allowed (the scheduler decided) and counted.
	if st := p.Reserve(ctx, nil, plainPod("huge", "4", "1Gi"), "n"); !st.IsSuccess() {
		t.Fatal(st)
	}
	if !n.OverBudget() {
		t.Fatal("node not over budget")
	}

	// NormalizeScore: randomised into [1, score], zero stays zero.
	p.cfg.Scoring.Randomize = true
	for i := 0; i < 100; i++ {
		scores := fwk.NodeScoreList{{Name: "x", Score: 40}, {Name: "y", Score: 0}}
		_ = p.NormalizeScore(ctx, nil, nil, scores)
		if scores[0].Score < 1 || scores[0].Score > 40 || scores[1].Score != 0 {
			t.Fatalf("normalised %v", scores)
		}
	}
	if _, st := p.PostFilter(ctx, nil, pod, nil); st.Code() != fwk.Unschedulable {
		t.Fatalf("PostFilter %v", st)
	}
}

func TestLoadConfigFromArgs(t *testing.T) {
	json := []byte(`{"watermark":0.5,"scoring":{"minUsageScore":0.5,"maxUsageScore":0,"scorePeak":0.8,"randomize":true},
 "schedulerName":"s","reconcileWorkers":1,"logSuccessiveFailuresThreshold":1,"startupEventHandlingTimeoutSeconds":1,
 "patchRetryWaitSeconds":1,"k8sCRUDTimeoutSeconds":1,"nodeMetricLabels":{},"ignoredNamespaces":[],"permitAddr":"127.0.0.1:0"}`)
	c, err := loadConfig(&runtime.Unknown{Raw: json})
	if err != nil || c.Watermark != 0.5 || c.PermitAddr != "127.0.0.1:0" || c.MetricsAddr != ":9100" {
		t.Fatalf("JSON args: %+v %v", c, err)
	}
	yamlArgs := []byte("watermark: 0.7\nscoring: {minUsageScore: 0.5, maxUsageScore: 0, scorePeak: 0.8, randomize: false}\n" +
		"schedulerName: s\nreconcileWorkers: 1\nlogSuccessiveFailuresThreshold: 1\nstartupEventHandlingTimeoutSeconds: 1\n" +
		"patchRetryWaitSeconds: 1\nk8sCRUDTimeoutSeconds: 1\nnodeMetricLabels: {}\nignoredNamespaces: []\n")
	c, err = loadConfig(&runtime.Unknown{Raw: yamlArgs, ContentType: runtime.ContentTypeYAML})
	if err != nil || c.Watermark != 0.7 {
		t.Fatalf("YAML args: %+v %v", c, err)
	}
	if _, err := loadConfig(&runtime.Unknown{Raw: []byte(`{"watermark":2}`)}); err == nil {
		t.Fatal("bad args accepted")
	}
	// No args: the file at the default path, which does not exist here.
	if _, err := loadConfig(nil); err == nil {
		t.Fatal("missing config file accepted")
	}
}

// The scheduler calls Reserve with its assumed copy of the pod, whose
// spec.nodeName already names the node, and the plugin's watch can trail
// the scheduler's: such a pod is new to the plugin, not bound.
func TestReserveBeforeTheWatchSeesThePod(t *testing.T) {
	f := newFixture(t, true)
	f.node("n", 2000, 8*gi)
	p := &AutoscaleEnforcer{e: f.e, cfg: testConfig(), log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	n, _ := f.e.st.Node("n")
	assumed := func(name string) *corev1.Pod {
		pod := plainPod(name, "500m", "1Gi")
		pod.Spec.NodeName = "n"
		return pod
	}

	if st := p.Reserve(ctx, nil, assumed("x"), "n"); !st.IsSuccess() {
		t.Fatalf("Reserve of a pod the watch has not shown: %v", st)
	}
	if n.CPU.Reserved != 500 {
		t.Fatalf("after Reserve: %d", n.CPU.Reserved)
	}
	// The watch catches up: the pod pending (its metadata re-synced), then
	// bound.
	f.e.OnPod(plainPod("x", "500m", "1Gi"))
	if rec, _ := f.e.st.Pod(state.PodKey{Namespace: "ns", Name: "x"}); rec.Node != "n" || !rec.Tentative || n.CPU.Reserved != 500 {
		t.Fatalf("pending pod seen: %+v, node holds %d", rec, n.CPU.Reserved)
	}
	f.e.OnPod(assumed("x"))
	if rec, _ := f.e.st.Pod(state.PodKey{Namespace: "ns", Name: "x"}); rec.Node != "n" || rec.Tentative || n.CPU.Reserved != 500 {
		t.Fatalf("binding seen: %+v, node holds %d", rec, n.CPU.Reserved)
	}

	// An attempt that fails before the watch shows the pod leaves nothing.
	if st := p.Reserve(ctx, nil, assumed("y"), "n"); !st.IsSuccess() {
		t.Fatal(st)
	}
	p.Unreserve(ctx, nil, assumed("y"), "n")
	if _, known := f.e.st.Pod(state.PodKey{Namespace: "ns", Name: "y"}); known || n.CPU.Reserved != 500 {
		t.Fatalf("after Unreserve: known=%v, node holds %d", known, n.CPU.Reserved)
	}
}
