package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// validVM is accepted; each bad case changes one thing in it.
const validVM = `
apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: bad
spec:
  guest:
    cpus: {min: 1, max: 4, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 8, use: 2}
    rootDisk: {image: vm-postgres:15, size: 2Gi}
    command: ["/bin/sh"]
    env: [{name: A, value: b}]
    ports:
    - {name: postgres, port: 5432}
  disks:
  - name: pgdata
    mountPath: /var/lib/postgresql
    emptyDisk: {size: 1Gi}
`

func set(path string, value any) func(*unstructured.Unstructured) error {
	return func(u *unstructured.Unstructured) error {
		return unstructured.SetNestedField(u.Object, value, strings.Split(path, ".")...)
	}
}

func setIndexed(listPath string, index int, field string, value any) func(*unstructured.Unstructured) error {
	return func(u *unstructured.Unstructured) error {
		path := strings.Split(listPath, ".")
		list, _, err := unstructured.NestedSlice(u.Object, path...)
		if err != nil {
			return err
		}
		list[index].(map[string]any)[field] = value
		return unstructured.SetNestedSlice(u.Object, list, path...)
	}
}

func TestBadManifestsRejected(t *testing.T) {
	ns := newNamespace(t, "bad-manifests")
	ctx := context.Background()

	base := mustYAML(t, validVM)
	base.SetNamespace(ns)
	if err := k8sClient.Create(ctx, base.DeepCopy(), client.DryRunAll); err != nil {
		t.Fatalf("the base manifest itself is rejected: %v", err)
	}

	cases := []struct {
		name   string
		mutate func(*unstructured.Unstructured) error
		want   []string
	}{
		{"cpu use above max", set("spec.guest.cpus.use", int64(5)), []string{"spec.guest.cpus.use", "5", "is above max 4"}},
		{"cpu use below min", set("spec.guest.cpus.use", "500m"), []string{"spec.guest.cpus.use", "is below min 1"}},
		{"cpu min above max", set("spec.guest.cpus.min", int64(6)), []string{"spec.guest.cpus.min", "is above max 4"}},
		{"memory use above max", set("spec.guest.memorySlots.use", int64(9)), []string{"spec.guest.memorySlots.use", "is above max 8"}},
		{"memory min above max", set("spec.guest.memorySlots.min", int64(10)), []string{"spec.guest.memorySlots.min", "is above max 8"}},
		{"memory slots over 512", set("spec.guest.memorySlots.max", int64(1000)), []string{"spec.guest.memorySlots.max", "512"}},
		{"memory use zero", set("spec.guest.memorySlots.use", int64(0)), []string{"spec.guest.memorySlots.use"}},
		{"slot size not a multiple of 8Mi", set("spec.guest.memorySlotSize", "100Mi"), []string{"spec.guest.memorySlotSize", "multiple of 8Mi"}},
		{"reserved disk name", setIndexed("spec.disks", 0, "name", "rootdisk"), []string{"spec.disks[0].name", "reserved"}},
		{"disk name too long", setIndexed("spec.disks", 0, "name", strings.Repeat("d", 33)), []string{"spec.disks[0].name", "32"}},
		{"disk with no source", func(u *unstructured.Unstructured) error {
			return unstructured.SetNestedSlice(u.Object, []any{map[string]any{"name": "empty", "mountPath": "/x"}}, "spec", "disks")
		}, []string{"spec.disks[0]", "exactly one of"}},
		{"port named qmp", setIndexed("spec.guest.ports", 0, "name", "qmp"), []string{"spec.guest.ports[0].name", "reserved"}},
		{"port out of range", setIndexed("spec.guest.ports", 0, "port", int64(70000)), []string{"spec.guest.ports[0].port"}},
		{"unknown port protocol", setIndexed("spec.guest.ports", 0, "protocol", "SCTP"), []string{"spec.guest.ports[0].protocol", "Unsupported value"}},
		{"unknown restart policy", set("spec.restartPolicy", "Sometimes"), []string{"spec.restartPolicy", "Unsupported value"}},
		{"unknown cpu scaling mode", set("spec.cpuScalingMode", "Magic"), []string{"spec.cpuScalingMode", "Unsupported value"}},
		{"unknown architecture", set("spec.targetArchitecture", "riscv64"), []string{"spec.targetArchitecture", "Unsupported value"}},
		{"cpu amount not a quantity", set("spec.guest.cpus.use", "lots"), []string{"spec.guest.cpus.use"}},
		{"qmp port out of range", set("spec.qmp", int64(70000)), []string{"spec.qmp"}},
		{"no guest", func(u *unstructured.Unstructured) error {
			unstructured.RemoveNestedField(u.Object, "spec", "guest")
			return nil
		}, []string{"spec.guest", "Required"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj := base.DeepCopy()
			if err := c.mutate(obj); err != nil {
				t.Fatal(err)
			}
			assertRejected(t, k8sClient.Create(ctx, obj, client.DryRunAll), c.want)
		})
	}

	migrationCases := []struct {
		name string
		doc  string
		want []string
	}{
		{"no vmName", "apiVersion: vm.neon.tech/v1\nkind: VirtualMachineMigration\nmetadata: {name: m}\nspec: {}\n", []string{"spec.vmName"}},
		{"zero bandwidth", "apiVersion: vm.neon.tech/v1\nkind: VirtualMachineMigration\nmetadata: {name: m}\nspec: {vmName: a, maxBandwidth: \"0\"}\n", []string{"spec.maxBandwidth", "must be above 0"}},
	}
	for _, c := range migrationCases {
		t.Run("migration "+c.name, func(t *testing.T) {
			obj := mustYAML(t, c.doc)
			obj.SetNamespace(ns)
			assertRejected(t, k8sClient.Create(ctx, obj, client.DryRunAll), c.want)
		})
	}
}

func TestImmutableFieldsRejectedOnUpdate(t *testing.T) {
	ns := newNamespace(t, "immutable")
	ctx := context.Background()
	vm := mustYAML(t, validVM)
	vm.SetNamespace(ns)
	vm.SetName("running")
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		mutate func(*unstructured.Unstructured) error
		want   string
	}{
		{"cpus.min", set("spec.guest.cpus.min", "500m"), "spec.guest.cpus.min: Forbidden: field is immutable"},
		{"cpus.max", set("spec.guest.cpus.max", int64(2)), "spec.guest.cpus.max: Forbidden: field is immutable"},
		{"memorySlots.min", set("spec.guest.memorySlots.min", int64(1)), "spec.guest.memorySlots.min: Forbidden"},
		{"memorySlots.max", set("spec.guest.memorySlots.max", int64(16)), "spec.guest.memorySlots.max: Forbidden"},
		{"rootDisk", set("spec.guest.rootDisk.image", "other:1"), "spec.guest.rootDisk: Forbidden"},
		{"ports", setIndexed("spec.guest.ports", 0, "port", int64(6432)), "spec.guest.ports: Forbidden"},
		{"command", set("spec.guest.command", []any{"/bin/bash"}), "spec.guest.command: Forbidden"},
		{"env", set("spec.guest.env", []any{}), "spec.guest.env: Forbidden"},
		{"disks", setIndexed("spec.disks", 0, "mountPath", "/elsewhere"), "spec.disks: Forbidden"},
		{"enableSSH", set("spec.enableSSH", false), "spec.enableSSH: Forbidden"},
		{"enableAcceleration", set("spec.enableAcceleration", false), "spec.enableAcceleration: Forbidden"},
		{"initScript", set("spec.initScript", "echo hi"), "spec.initScript: Forbidden"},
		{"cpuScalingMode", set("spec.cpuScalingMode", "SysfsScaling"), "spec.cpuScalingMode: Forbidden: may only be set when empty (is QmpScaling)"},
		{"use above max", set("spec.guest.cpus.use", int64(8)), "spec.guest.cpus.use: Invalid value: \"8\": is above max 4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cur := getUnstructured(t, vm, ns, "running")
			if err := c.mutate(cur); err != nil {
				t.Fatal(err)
			}
			err := k8sClient.Update(ctx, cur)
			if err == nil {
				t.Fatalf("update accepted; want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("rejection %q does not contain %q", err.Error(), c.want)
			}
		})
	}

	t.Run("allowed changes", func(t *testing.T) {
		cur := getUnstructured(t, vm, ns, "running")
		for _, f := range []func(*unstructured.Unstructured) error{
			set("spec.guest.cpus.use", "2500m"),
			set("spec.guest.memorySlots.use", int64(6)),
			set("spec.targetRevision", map[string]any{"revision": map[string]any{"value": int64(3), "flags": int64(1)}, "updatedAt": "2025-01-02T03:04:05Z"}),
			set("spec.targetArchitecture", "amd64"), // nil -> value is allowed
		} {
			if err := f(cur); err != nil {
				t.Fatal(err)
			}
		}
		if err := k8sClient.Update(ctx, cur); err != nil {
			t.Fatalf("scaling update rejected: %v", err)
		}
	})

	t.Run("migration spec", func(t *testing.T) {
		m := mustYAML(t, minimalMigration)
		m.SetNamespace(ns)
		if err := k8sClient.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		cur := getUnstructured(t, m, ns, m.GetName())
		_ = set("spec.vmName", "other")(cur)
		_ = set("spec.maxBandwidth", "2Gi")(cur)
		err := k8sClient.Update(ctx, cur)
		if err == nil || !strings.Contains(err.Error(), "spec.vmName: Forbidden: field is immutable") ||
			!strings.Contains(err.Error(), "spec.maxBandwidth: Forbidden: field is immutable") {
			t.Fatalf("migration spec change: got %v; want both fields named immutable", err)
		}
	})
}

func assertRejected(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a rejection naming %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("rejection %q does not contain %q", err.Error(), w)
		}
	}
}

// An object on --skip-update-validation-for may break update rules; the
// change goes through with a warning and a SkippedValidation event.
func TestSkipUpdateValidation(t *testing.T) {
	ns := newNamespace(t, skippedVM.Namespace)
	ctx := context.Background()
	vm := mustYAML(t, validVM)
	vm.SetNamespace(ns)
	vm.SetName(skippedVM.Name)
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	cur := getUnstructured(t, vm, ns, vm.GetName())
	_ = set("spec.guest.cpus.max", int64(2))(cur)
	if err := k8sClient.Update(ctx, cur); err != nil {
		t.Fatalf("update of a skipped object rejected: %v", err)
	}
	got := getUnstructured(t, vm, ns, vm.GetName())
	if v, _, _ := unstructured.NestedFieldNoCopy(got.Object, "spec", "guest", "cpus", "max"); jsonValue(t, v) != jsonValue(t, 2) {
		t.Fatalf("cpus.max = %v after the skipped update; want 2", v)
	}
	eventually(t, 30*time.Second, "SkippedValidation event", func() error {
		var events eventsv1.EventList
		if err := k8sClient.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == "SkippedValidation" && e.Regarding.Name == skippedVM.Name &&
				strings.Contains(e.Note, "spec.guest.cpus.max") {
				return nil
			}
		}
		return errNotYet("event")
	})

	// Another object with the same change is still rejected.
	other := mustYAML(t, validVM)
	other.SetNamespace(ns)
	other.SetName("not-skipped")
	if err := k8sClient.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	cur = getUnstructured(t, other, ns, other.GetName())
	_ = set("spec.guest.cpus.max", int64(2))(cur)
	if err := k8sClient.Update(ctx, cur); err == nil {
		t.Fatal("update of an object not on the skip list accepted")
	}
}

// An update that leaves the spec as it was (the plugin's and agent's
// annotations, labels) is not sent to the webhooks at all: their
// matchCondition excludes it, which the apiserver counts. A spec change in
// the same object still goes to them and is still validated.
func TestMetadataOnlyUpdateSkipsWebhooks(t *testing.T) {
	ns := newNamespace(t, "metadata-only")
	ctx := context.Background()
	vm := mustYAML(t, validVM)
	vm.SetNamespace(ns)
	vm.SetName("annotated")
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	webhooks := []string{"mvirtualmachine.vm.neon.tech", "vvirtualmachine.vm.neon.tech"}
	before := map[string]float64{}
	for _, w := range webhooks {
		before[w] = apiserverCounter(t, "apiserver_admission_match_condition_exclusions_total", map[string]string{"name": w, "operation": "UPDATE"})
	}
	const n = 5
	for i := 0; i < n; i++ {
		patch := client.RawPatch(types.JSONPatchType, []byte(fmt.Sprintf(
			`[{"op":"add","path":"/metadata/annotations","value":{"internal.autoscaling.neon.tech/resources-approved":"{\"vCPUs\":%d,\"mem\":\"4Gi\"}"}}]`, i+1)))
		if err := k8sClient.Patch(ctx, vm.DeepCopy(), patch); err != nil {
			t.Fatalf("annotation patch %d: %v", i, err)
		}
	}
	for _, w := range webhooks {
		after := apiserverCounter(t, "apiserver_admission_match_condition_exclusions_total", map[string]string{"name": w, "operation": "UPDATE"})
		if after-before[w] < n {
			t.Errorf("webhook %s: %v of %d annotation-only updates excluded by its matchCondition", w, after-before[w], n)
		}
	}
	cur := getUnstructured(t, vm, ns, vm.GetName())
	_ = set("spec.guest.cpus.max", int64(2))(cur)
	cur.SetAnnotations(map[string]string{"changed": "too"})
	assertRejected(t, k8sClient.Update(ctx, cur), []string{"spec.guest.cpus.max: Forbidden: field is immutable"})
}

// apiserverCounter sums the kube-apiserver's samples of a metric whose
// labels include all of the given ones.
func apiserverCounter(t *testing.T, metric string, labels map[string]string) float64 {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("apiserver metrics: %v", err)
	}
	sum := 0.0
lines:
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		for k, v := range labels {
			if !strings.Contains(line, fmt.Sprintf(`%s=%q`, k, v)) {
				continue lines
			}
		}
		var x float64
		if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &x); err == nil {
			sum += x
		}
	}
	return sum
}
