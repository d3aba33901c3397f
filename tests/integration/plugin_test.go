package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

const gib = api.Bytes(1 << 30)

func res(milli uint32, mem api.Bytes) api.Resources {
	return api.Resources{VCPU: vmv1.MilliCPU(milli), Mem: mem}
}

// The real autoscale-scheduler binary (kube-scheduler + AutoscaleEnforcer)
// against the real apiserver: placement without overcommit, agents' permits
// over HTTP written as VM annotations, bad requests, a crash and restart
// between requests, and a migration past the watermark.
func TestAutoscaleScheduler(t *testing.T) {
	sched := startScheduler(t)

	t.Run("deployment manifest", func(t *testing.T) {
		// The shipped Deployment passes the apiserver's full validation.
		for _, obj := range readManifests(t, filepath.Join(repoRoot, "config", "scheduler", "deployment.yaml")) {
			if err := k8sClient.Create(context.Background(), obj, client.DryRunAll); err != nil {
				t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
			}
			if obj.GetNamespace() != "kube-system" || obj.GetLabels()["name"] != schedulerName {
				t.Errorf("%s %s: not in kube-system with label name=%s (where agents look)", obj.GetKind(), obj.GetName(), schedulerName)
			}
		}
	})

	t.Run("placement", func(t *testing.T) {
		ns := newNamespace(t, fresh("plugin-placement"))
		t.Cleanup(func() { deleteAllIn(t, ns) })
		createNode(t, "place-1", "place", "2", "8Gi")
		createNode(t, "place-2", "place", "2", "8Gi")
		// Five VMs of 1 vCPU / 4 GiB on two nodes of 2 vCPU / 8 GiB: four fit.
		for i := 0; i < 5; i++ {
			createVM(t, ns, fmt.Sprintf("vm-%d", i), "place", 1000, 4, nil)
		}
		perNode := map[string]int{}
		eventually(t, 60*time.Second, "four runner pods bound", func() error {
			perNode = map[string]int{}
			bound := 0
			for i := 0; i < 5; i++ {
				node, err := podNode(ns, fmt.Sprintf("vm-%d-runner", i))
				if err != nil {
					return err
				}
				if node != "" {
					perNode[node]++
					bound++
				}
			}
			if bound != 4 {
				return fmt.Errorf("%d bound: %v", bound, perNode)
			}
			return nil
		})
		if perNode["place-1"] != 2 || perNode["place-2"] != 2 {
			t.Fatalf("placement %v: want two per node", perNode)
		}
		eventually(t, 60*time.Second, "fifth pod unschedulable with the plugin's reason", func() error {
			var pending *corev1.Pod
			for i := 0; i < 5; i++ {
				var p corev1.Pod
				if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("vm-%d-runner", i)}, &p); err != nil {
					return err
				}
				if p.Spec.NodeName == "" {
					pending = &p
				}
			}
			if pending == nil {
				return fmt.Errorf("no pending pod")
			}
			for _, c := range pending.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "Not enough resources for Pod") {
					return nil
				}
			}
			return fmt.Errorf("pending pod conditions: %+v", pending.Status.Conditions)
		})
		for _, n := range []string{"place-1", "place-2"} {
			v, err := sched.metric(fmt.Sprintf(`vmscale_plugin_node_reserved{node=%q,resource="cpu"}`, n))
			if err != nil || v != 2 {
				t.Fatalf("node %s reserved cpu %v, %v; want 2", n, v, err)
			}
		}
	})

	ns := newNamespace(t, fresh("plugin-permit"))
	t.Cleanup(func() { deleteAllIn(t, ns) })
	createNode(t, "permit-1", "permit", "2", "8Gi")
	createVM(t, ns, "a", "permit", 500, 2, nil)
	createVM(t, ns, "b", "permit", 500, 2, nil)
	for _, p := range []string{"a-runner", "b-runner"} {
		eventually(t, 60*time.Second, p+" bound", func() error {
			node, err := podNode(ns, p)
			if err == nil && node != "permit-1" {
				err = fmt.Errorf("on %q", node)
			}
			return err
		})
		waitPluginKnows(t, sched, ns, p, res(500, 2*gib))
	}

	t.Run("permit", func(t *testing.T) {
		// a asks for 2 vCPU / 8 GiB; b holds 500m / 2Gi, so a gets what is
		// free in whole units: 1500m / 6Gi.
		last := res(500, 2*gib)
		reply, err := postPermit(sched.permitURL, agentRequest(ns, "a-runner", res(2000, 8*gib), &last))
		if err != nil || reply.status != 200 {
			t.Fatalf("permit: %+v %v", reply, err)
		}
		if reply.permit != res(1500, 6*gib) {
			t.Fatalf("permit %v, want 1500m/6Gi", reply.permit)
		}
		vm := getVM(t, ns, "a")
		want := map[string]string{
			api.ScalingUnitAnnotation: `{"vCPUs":"250m","mem":"1Gi"}`,
			api.RequestedAnnotation:   `{"vCPUs":2,"mem":"8Gi"}`,
			api.ApprovedAnnotation:    `{"vCPUs":"1500m","mem":"6Gi"}`,
		}
		for k, v := range want {
			if vm.Annotations[k] != v {
				t.Errorf("VM annotation %s = %q, want %q", k, vm.Annotations[k], v)
			}
		}
		// A steady request within the permit is answered as asked.
		steady := reply.permit
		reply, err = postPermit(sched.permitURL, agentRequest(ns, "a-runner", steady, &steady))
		if err != nil || reply.status != 200 || reply.permit != steady {
			t.Fatalf("steady: %+v %v", reply, err)
		}
		// b cannot grow: the node is full.
		lastB := res(500, 2*gib)
		reply, err = postPermit(sched.permitURL, agentRequest(ns, "b-runner", res(1000, 4*gib), &lastB))
		if err != nil || reply.status != 200 || reply.permit != lastB {
			t.Fatalf("b on a full node: %+v %v", reply, err)
		}
	})

	t.Run("Neon's request vectors", func(t *testing.T) {
		// Neon's agent's exact bytes, for the pods they name, answered in
		// Neon's shape. Their pods live in "default".
		createNode(t, "vectors-1", "vectors", "8", "32Gi")
		createVMWithPod(t, "default", "compute-quiet-tree", "compute-quiet-tree-123456-abcde", "vectors", 250, 1, nil)
		createVMWithPod(t, "default", "p-vm", "p", "vectors", 250, 1, nil)
		t.Cleanup(func() {
			ctx := context.Background()
			for _, o := range []client.Object{
				&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "compute-quiet-tree-123456-abcde"}},
				&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"}},
				&vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "compute-quiet-tree"}},
				&vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p-vm"}},
			} {
				_ = k8sClient.Delete(ctx, o, client.GracePeriodSeconds(0))
			}
		})
		for _, p := range []string{"compute-quiet-tree-123456-abcde", "p"} {
			eventually(t, 60*time.Second, p+" bound", func() error {
				if node, err := podNode("default", p); err != nil || node != "vectors-1" {
					return fmt.Errorf("%q %v", node, err)
				}
				return nil
			})
			waitPluginKnows(t, sched, "default", p, res(250, gib))
		}
		dir := filepath.Join(repoRoot, "testdata", "compat", "vectors", "agent-plugin")
		var bodies []string
		for _, f := range []string{"AgentRequest-metrics-nil.json", "AgentRequest-lastPermit-nil.json", "AgentRequest-lastPermit-set.json", "AgentRequest-fractional.json"} {
			raw, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			bodies = append(bodies, string(raw))
		}
		var alternates []struct{ Input string }
		raw, err := os.ReadFile(filepath.Join(dir, "AgentRequest-alternate-inputs.roundtrip.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := jsonUnmarshal(string(raw), &alternates); err != nil {
			t.Fatal(err)
		}
		for _, a := range alternates {
			bodies = append(bodies, a.Input)
		}
		for _, body := range bodies {
			var req api.AgentRequest
			if err := jsonUnmarshal(body, &req); err != nil {
				t.Fatal(err)
			}
			reply, err := postPermit(sched.permitURL, []byte(body))
			if err != nil || reply.status != 200 {
				t.Fatalf("%s: %+v %v", body, reply, err)
			}
			var shape map[string]any
			if err := jsonUnmarshal(reply.body, &shape); err != nil || len(shape) != 1 || shape["permit"] == nil {
				t.Fatalf("reply %s is not {\"permit\":…}", reply.body)
			}
			// The node has room for all of it.
			if reply.permit != req.Resources {
				t.Fatalf("%s: permit %v, want %v", body, reply.permit, req.Resources)
			}
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		good := string(agentRequest(ns, "a-runner", res(1500, 6*gib), nil))
		cases := []struct {
			name, body string
			status     int
			msg        string
		}{
			{"wrong version", strings.Replace(good, `"protoVersion":7`, `"protoVersion":6`, 1), 400, "protocol version mismatch: need v5.0 but got v4.0"},
			{"bad JSON", good[:20], 400, "bad JSON"},
			{"zero compute unit", strings.Replace(good, `"computeUnit":{"vCPUs":"250m"`, `"computeUnit":{"vCPUs":0`, 1), 400, "computeUnit"},
			{"unknown pod", strings.Replace(good, `"a-runner"`, `"nobody"`, 1), 404, "not found"},
			{"too large", good[:len(good)-1] + `,"pad":"` + strings.Repeat("x", 1100) + `"}`, 400, "too large"},
		}
		for _, c := range cases {
			reply, err := postPermit(sched.permitURL, []byte(c.body))
			if err != nil || reply.status != c.status || !strings.Contains(reply.body, c.msg) {
				t.Errorf("%s: %d %q (%v); want %d %q", c.name, reply.status, reply.body, err, c.status, c.msg)
			}
		}
		resp, err := http.Get(sched.permitURL)
		if err != nil || resp.StatusCode != 400 {
			t.Errorf("GET: %v %v", resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
		// Counted by outcome.
		for outcome, least := range map[string]float64{"bad_request": 5, "not_found": 1, "ok": 3} {
			v, err := sched.metric(fmt.Sprintf(`vmscale_plugin_permit_requests_total{outcome=%q}`, outcome))
			if err != nil || v < least {
				t.Errorf("requests with outcome %s: %v (%v), want at least %v", outcome, v, err, least)
			}
		}
	})

	t.Run("restart", func(t *testing.T) {
		sched.kill()
		// While it is down, agents get no answer at all.
		if _, err := postPermit(sched.permitURL, agentRequest(ns, "a-runner", res(1500, 6*gib), nil)); err == nil {
			t.Fatal("permit answered with the scheduler killed")
		}
		// Ask from the moment the process starts: until it has listed the
		// cluster it must refuse (no connection yet, or 500 "starting up"),
		// never answer from a partial view (a 404 for a pod not listed
		// yet, or a permit).
		sched.launch()
		lastB := res(500, 2*gib)
		refused, notListening := 0, 0
		deadline := time.Now().Add(60 * time.Second)
		for {
			reply, err := postPermit(sched.permitURL, agentRequest(ns, "b-runner", lastB, &lastB))
			if err != nil {
				notListening++
			} else if reply.status == 500 && strings.Contains(reply.body, "starting up") {
				refused++
			} else if reply.status == 200 {
				break
			} else {
				t.Fatalf("while starting: %d %s", reply.status, reply.body)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no permit 60 s after restart\n%s", sched.logTail())
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Logf("while starting: %d requests found no listener, %d were refused as starting up", notListening, refused)
		sched.waitReady()
		// The rebuilt state holds exactly what was approved before.
		for r, want := range map[string]float64{"cpu": 2, "memory": float64(8 * gib)} {
			v, err := sched.metric(fmt.Sprintf(`vmscale_plugin_node_reserved{node="permit-1",resource=%q}`, r))
			if err != nil || v != want {
				t.Fatalf("after restart, node reserved %s = %v (%v); want %v", r, v, err, want)
			}
		}
		// No double grant: b still cannot grow, a keeps its permit.
		reply, err := postPermit(sched.permitURL, agentRequest(ns, "b-runner", res(1000, 4*gib), &lastB))
		if err != nil || reply.status != 200 || reply.permit != lastB {
			t.Fatalf("b after restart: %+v %v", reply, err)
		}
		lastA := res(1500, 6*gib)
		reply, err = postPermit(sched.permitURL, agentRequest(ns, "a-runner", res(2000, 8*gib), &lastA))
		if err != nil || reply.status != 200 || reply.permit != lastA {
			t.Fatalf("a after restart: %+v %v", reply, err)
		}
		// a shrinks; b's pending request gets the room.
		shrink := res(500, 2*gib)
		if reply, err := postPermit(sched.permitURL, agentRequest(ns, "a-runner", shrink, &lastA)); err != nil || reply.permit != shrink {
			t.Fatalf("a shrinks: %+v %v", reply, err)
		}
		eventually(t, 10*time.Second, "b granted the freed room", func() error {
			vm := getVM(t, ns, "b")
			if got := vm.Annotations[api.ApprovedAnnotation]; got != `{"vCPUs":1,"mem":"4Gi"}` {
				return fmt.Errorf("b approved %q", got)
			}
			return nil
		})
	})

	t.Run("concurrent agents", func(t *testing.T) {
		cns := newNamespace(t, fresh("plugin-concurrent"))
		t.Cleanup(func() { deleteAllIn(t, cns) })
		createNode(t, "busy-1", "busy", "4", "16Gi")
		const n = 8
		for i := 0; i < n; i++ {
			createVM(t, cns, fmt.Sprintf("c%d", i), "busy", 250, 1, nil)
		}
		eventually(t, 60*time.Second, "all bound", func() error {
			for i := 0; i < n; i++ {
				if node, err := podNode(cns, fmt.Sprintf("c%d-runner", i)); err != nil || node == "" {
					return fmt.Errorf("c%d: %q %v", i, node, err)
				}
			}
			return nil
		})
		for i := 0; i < n; i++ {
			waitPluginKnows(t, sched, cns, fmt.Sprintf("c%d-runner", i), res(250, gib))
		}
		permits := make([]api.Resources, n)
		for i := range permits {
			permits[i] = res(250, gib)
		}
		var wg sync.WaitGroup
		for round := 0; round < 4; round++ {
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					last := permits[i]
					reply, err := postPermit(sched.permitURL, agentRequest(cns, fmt.Sprintf("c%d-runner", i), res(2000, 8*gib), &last))
					if err != nil || reply.status != 200 {
						t.Errorf("c%d: %+v %v", i, reply, err)
						return
					}
					permits[i] = reply.permit
				}(i)
			}
			wg.Wait()
		}
		var cpu, mem uint64
		for _, p := range permits {
			cpu += uint64(p.VCPU)
			mem += uint64(p.Mem)
		}
		if cpu > 4000 || mem > uint64(16*gib) {
			t.Fatalf("overcommitted: permits sum to %dm / %d B on a 4-vCPU/16Gi node", cpu, mem)
		}
		// Every agent wants more than fits, so the approvals fill the node
		// exactly, and never more.
		eventually(t, 10*time.Second, "node filled exactly by approvals", func() error {
			var approvedCPU, approvedMem uint64
			for i := 0; i < n; i++ {
				vm := getVM(t, cns, fmt.Sprintf("c%d", i))
				var a api.Resources
				if err := jsonUnmarshal(vm.Annotations[api.ApprovedAnnotation], &a); err != nil {
					return fmt.Errorf("c%d: %w", i, err)
				}
				if a.VCPU < permits[i].VCPU {
					return fmt.Errorf("c%d approved %v below its permit %v", i, a, permits[i])
				}
				approvedCPU += uint64(a.VCPU)
				approvedMem += uint64(a.Mem)
			}
			if approvedCPU > 4000 || approvedMem > uint64(16*gib) {
				t.Fatalf("approvals overcommit the node: %dm / %d B", approvedCPU, approvedMem)
			}
			if approvedCPU != 4000 {
				return fmt.Errorf("approvals sum to %dm", approvedCPU)
			}
			return nil
		})
	})

	t.Run("watermark migration", func(t *testing.T) {
		mns := newNamespace(t, fresh("plugin-migrate"))
		t.Cleanup(func() { deleteAllIn(t, mns) })
		createNode(t, "full-1", "full", "4", "16Gi")
		mig := map[string]string{api.AutoMigrationLabel: "true"}
		createVM(t, mns, "oldest", "full", 1000, 4, mig)
		createVM(t, mns, "younger", "full", 1000, 4, mig)
		createVM(t, mns, "pinned", "full", 1000, 4, nil)
		for _, p := range []string{"oldest-runner", "younger-runner", "pinned-runner"} {
			eventually(t, 60*time.Second, p+" bound", func() error {
				if node, err := podNode(mns, p); err != nil || node != "full-1" {
					return fmt.Errorf("%q %v", node, err)
				}
				return nil
			})
			waitPluginKnows(t, sched, mns, p, res(1000, 4*gib))
		}
		var list vmv1.VirtualMachineMigrationList
		if err := k8sClient.List(context.Background(), &list, client.InNamespace(mns)); err != nil || len(list.Items) != 0 {
			t.Fatalf("migrations below the watermark: %v %v", list.Items, err)
		}
		// pinned grows to 2 vCPU: 4000m of 4000m, past the 3600m watermark.
		last := res(1000, 4*gib)
		reply, err := postPermit(sched.permitURL, agentRequest(mns, "pinned-runner", res(2000, 4*gib), &last))
		if err != nil || reply.permit != res(2000, 4*gib) {
			t.Fatalf("grow: %+v %v", reply, err)
		}
		var m vmv1.VirtualMachineMigration
		eventually(t, 20*time.Second, "migration created", func() error {
			return k8sClient.Get(context.Background(), client.ObjectKey{Namespace: mns, Name: "schedplugin-oldest-runner"}, &m)
		})
		if m.Spec.VMName != "oldest" || m.Labels[api.CreatedBySchedulerLabel] != "true" || !m.Spec.PreventsMigrationToSameHost() {
			t.Fatalf("migration %+v", m)
		}
		if err := k8sClient.List(context.Background(), &list, client.InNamespace(mns)); err != nil || len(list.Items) != 1 {
			t.Fatalf("want exactly one migration (one VM is enough), got %d %v", len(list.Items), err)
		}
		if v, err := sched.metric(`vmscale_plugin_migrations_created_total{node="full-1"}`); err != nil || v != 1 {
			t.Fatalf("migrations created metric %v %v", v, err)
		}
		// The controller moves the VM and reports success: the source pod
		// goes, and the plugin deletes the migration.
		if err := k8sClient.Delete(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: mns, Name: "oldest-runner"}},
			client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		m.Status.Phase = vmv1.VmmSucceeded
		if err := k8sClient.Status().Update(context.Background(), &m); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "finished migration deleted", func() error {
			err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: mns, Name: m.Name}, &vmv1.VirtualMachineMigration{})
			if err == nil {
				return fmt.Errorf("still there")
			}
			return ignoreNotFound(err)
		})
	})

	// The scheduler ran as its ServiceAccount with the shipped RBAC: nothing
	// it tried was forbidden.
	raw, err := os.ReadFile(sched.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "forbidden") {
			t.Errorf("the shipped RBAC is missing a permission: %s", line)
		}
	}
}
