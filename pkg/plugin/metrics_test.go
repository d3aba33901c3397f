package plugin

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/plugin/permit"
)

func TestNodeMetrics(t *testing.T) {
	m := NewMetrics(map[string]string{"pool": "example.com/pool"})
	e := NewEnforcer(testConfig(), slog.New(slog.DiscardHandler), clock.RealClock{}, newFakeCluster(), m)
	e.OnNode(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"example.com/pool": "db"}},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi")}},
	})
	e.OnPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: corev1.PodSpec{NodeName: "n",
		Containers: []corev1.Container{{Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("2Gi")}}}}}})
	m.ObservePermit(permit.OutcomeOK, 3*time.Millisecond)
	m.ObservePermit(permit.OutcomeNotFound, time.Millisecond)

	want := `
# HELP vmscale_plugin_node_reserved What pods hold on a node after overcommit, by resource.
# TYPE vmscale_plugin_node_reserved gauge
vmscale_plugin_node_reserved{node="n",pool="db",resource="cpu"} 1.5
vmscale_plugin_node_reserved{node="n",pool="db",resource="memory"} 2.147483648e+09
# HELP vmscale_plugin_node_total A node's allocatable amount, by resource (cpu in vCPUs, memory in bytes).
# TYPE vmscale_plugin_node_total gauge
vmscale_plugin_node_total{node="n",pool="db",resource="cpu"} 4
vmscale_plugin_node_total{node="n",pool="db",resource="memory"} 1.7179869184e+10
# HELP vmscale_plugin_node_watermark The amount past which pods are migrated off a node, by resource.
# TYPE vmscale_plugin_node_watermark gauge
vmscale_plugin_node_watermark{node="n",pool="db",resource="cpu"} 3.6
vmscale_plugin_node_watermark{node="n",pool="db",resource="memory"} 1.5461882265e+10
# HELP vmscale_plugin_permit_requests_total Agent permit requests answered, by outcome (ok, bad_request, not_found, error).
# TYPE vmscale_plugin_permit_requests_total counter
vmscale_plugin_permit_requests_total{outcome="not_found"} 1
vmscale_plugin_permit_requests_total{outcome="ok"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"vmscale_plugin_node_reserved", "vmscale_plugin_node_total", "vmscale_plugin_node_watermark", "vmscale_plugin_permit_requests_total"); err != nil {
		t.Fatal(err)
	}
	// A deleted node's series go with it.
	e.OnNodeDelete("n")
	if n, err := testutil.GatherAndCount(m.Registry, "vmscale_plugin_node_total"); err != nil || n != 0 {
		t.Fatalf("%d series after the node went, %v", n, err)
	}
}
