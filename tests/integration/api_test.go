package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

func TestCRDsInstalled(t *testing.T) {
	cases := []struct {
		name, kind, singular string
		columns              map[string]string // name -> JSONPath
		wide                 []string
		noStatus             bool // no status subresource (IPPool, as Whereabouts')
	}{
		{
			name: "virtualmachines.vm.neon.tech", kind: "VirtualMachine", singular: "neonvm",
			columns: map[string]string{
				"Cpus": ".status.cpus", "Memory": ".status.memorySize", "Pod": ".status.podName",
				"ExtraIP": ".status.extraNetIP", "Status": ".status.phase",
				"Restarts": ".status.restartCount", "Age": ".metadata.creationTimestamp",
				"Node": ".status.node", "Image": ".spec.guest.rootDisk.image",
				"CPUScalingMode": ".spec.cpuScalingMode", "TargetArchitecture": ".spec.targetArchitecture",
			},
			wide: []string{"Node", "Image", "CPUScalingMode", "TargetArchitecture"},
		},
		{
			name: "virtualmachinemigrations.vm.neon.tech", kind: "VirtualMachineMigration", singular: "neonvmm",
			columns: map[string]string{
				"VM": ".spec.vmName", "Source": ".status.sourcePodName", "SourceIP": ".status.sourcePodIP",
				"Target": ".status.targetPodName", "TargetIP": ".status.targetPodIP", "Status": ".status.phase",
				"Age": ".metadata.creationTimestamp",
			},
			wide: []string{"SourceIP", "TargetIP"},
		},
		{
			name: "ippools.vm.neon.tech", kind: "IPPool", singular: "ippool",
			columns:  map[string]string{"Range": ".spec.range", "Age": ".metadata.creationTimestamp"},
			noStatus: true,
		},
	}
	for _, c := range cases {
		t.Run(c.kind, func(t *testing.T) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := k8sClient.Get(context.Background(), client.ObjectKey{Name: c.name}, &crd); err != nil {
				t.Fatalf("CRD %s not installed: %v", c.name, err)
			}
			if crd.Spec.Group != "vm.neon.tech" || crd.Spec.Names.Kind != c.kind || crd.Spec.Names.Singular != c.singular {
				t.Errorf("names = %s %+v", crd.Spec.Group, crd.Spec.Names)
			}
			if crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
				t.Errorf("scope = %s", crd.Spec.Scope)
			}
			if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != "v1" ||
				(!c.noStatus && (crd.Spec.Versions[0].Subresources == nil || crd.Spec.Versions[0].Subresources.Status == nil)) {
				t.Fatalf("want one served v1 version with a status subresource, got %+v", crd.Spec.Versions)
			}
			got := map[string]apiextensionsv1.CustomResourceColumnDefinition{}
			for _, col := range crd.Spec.Versions[0].AdditionalPrinterColumns {
				got[col.Name] = col
			}
			for name, path := range c.columns {
				if got[name].JSONPath != path {
					t.Errorf("printer column %s reads %q; want %q", name, got[name].JSONPath, path)
				}
			}
			for _, name := range c.wide {
				if got[name].Priority == 0 {
					t.Errorf("printer column %s shows outside -o wide", name)
				}
			}
			eventually(t, 30e9, "CRD established", func() error {
				if err := k8sClient.Get(context.Background(), client.ObjectKey{Name: c.name}, &crd); err != nil {
					return err
				}
				for _, cond := range crd.Status.Conditions {
					if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
						return nil
					}
				}
				return errNotYet("Established")
			})
		})
	}
}

// Every NeonVM sample manifest must be accepted unchanged, and nothing in it
// may be pruned by the schema or lost by the Go types.
func TestCompatManifestsAccepted(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot, "testdata", "compat", "manifests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no compat manifests: %v", err)
	}
	for i, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			ns := newNamespace(t, "compat-"+string(rune('a'+i)))
			ctx := context.Background()
			for _, obj := range readManifests(t, f) {
				obj.SetNamespace(ns)
				want := jsonValue(t, obj.Object["spec"])

				dry := obj.DeepCopy()
				if err := k8sClient.Create(ctx, dry, client.DryRunAll); err != nil {
					t.Fatalf("dry-run create %s %s rejected: %v", obj.GetKind(), obj.GetName(), err)
				}
				if diff := missingFrom(want, jsonValue(t, dry.Object["spec"]), "spec"); len(diff) > 0 {
					t.Errorf("dry-run %s lost fields:\n%s", obj.GetKind(), strings.Join(diff, "\n"))
				}
				if err := k8sClient.Create(ctx, obj.DeepCopy()); err != nil {
					t.Fatalf("create %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
				stored := getUnstructured(t, obj, ns, obj.GetName())
				if diff := missingFrom(want, jsonValue(t, stored.Object["spec"]), "spec"); len(diff) > 0 {
					t.Errorf("stored %s lost fields:\n%s", obj.GetKind(), strings.Join(diff, "\n"))
				}

				// The Go types must carry every field too: decode what the
				// server stored and encode it again.
				var typed client.Object
				switch obj.GetKind() {
				case "VirtualMachine":
					typed = &vmv1.VirtualMachine{}
				case "VirtualMachineMigration":
					typed = &vmv1.VirtualMachineMigration{}
				default:
					continue
				}
				raw, _ := json.Marshal(stored.Object)
				if err := json.Unmarshal(raw, typed); err != nil {
					t.Fatalf("decode %s into Go type: %v", obj.GetKind(), err)
				}
				var back map[string]any
				raw, _ = json.Marshal(typed)
				_ = json.Unmarshal(raw, &back)
				if diff := missingFrom(want, back["spec"], "spec"); len(diff) > 0 {
					t.Errorf("Go %s lost fields:\n%s", obj.GetKind(), strings.Join(diff, "\n"))
				}
			}
		})
	}
}

type errNotYet string

func (e errNotYet) Error() string { return "not yet: " + string(e) }

// minimalVM is a VirtualMachine with only the required fields.
const minimalVM = `
apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: minimal
spec:
  guest:
    cpus: {min: "0.25", max: 2, use: "500m"}
    memorySlots: {min: 2, max: 8, use: 2}
    rootDisk: {image: vm-postgres:15}
    ports:
    - {name: postgres, port: 5432}
  extraNetwork: {enable: true}
  tls: {certificateIssuer: ca, serverName: db}
`

const minimalMigration = `
apiVersion: vm.neon.tech/v1
kind: VirtualMachineMigration
metadata:
  name: minimal
spec:
  vmName: minimal
`

func TestDefaultsApplied(t *testing.T) {
	ns := newNamespace(t, "defaults")
	ctx := context.Background()
	cases := []struct {
		doc  string
		want map[string]any // dotted path under the object -> value
	}{
		{doc: minimalVM, want: map[string]any{
			"spec.qmp": int64(20183), "spec.qmpManual": int64(20184), "spec.runnerPort": int64(25183),
			"spec.terminationGracePeriodSeconds": int64(5), "spec.restartPolicy": "Always",
			"spec.enableAcceleration": true, "spec.enableSSH": true, "spec.enableNetworkMonitoring": false,
			"spec.cpuScalingMode":                 "QmpScaling", // by the mutating webhook
			"spec.guest.memorySlotSize":           "1Gi",
			"spec.guest.rootDisk.imagePullPolicy": "IfNotPresent",
			"spec.guest.ports.0.protocol":         "TCP",
			"spec.extraNetwork.interface":         "net1",
			"spec.tls.mountPath":                  "/var/tls",
			"spec.guest.cpus.min":                 "0.25", // kept as written
		}},
		{doc: minimalMigration, want: map[string]any{
			"spec.preventMigrationToSameHost": true, "spec.completionTimeout": int64(3600),
			"spec.incremental": true, "spec.allowPostCopy": false, "spec.autoConverge": true,
			"spec.maxBandwidth": "1Gi",
		}},
	}
	for _, c := range cases {
		obj := mustYAML(t, c.doc)
		obj.SetNamespace(ns)
		t.Run(obj.GetKind(), func(t *testing.T) {
			if err := k8sClient.Create(ctx, obj); err != nil {
				t.Fatalf("create: %v", err)
			}
			got := getUnstructured(t, obj, ns, obj.GetName())
			for path, want := range c.want {
				v, found, err := nestedValue(got.Object, path)
				if err != nil || !found {
					t.Errorf("%s: not set (%v)", path, err)
					continue
				}
				if jsonValue(t, v) != jsonValue(t, want) {
					t.Errorf("%s = %v; want %v", path, v, want)
				}
			}
		})
	}
}

// nestedValue reads a dotted path where a numeric segment indexes a list.
func nestedValue(obj map[string]any, path string) (any, bool, error) {
	var cur any = obj
	for _, seg := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[seg]
			if !ok {
				return nil, false, nil
			}
			cur = v
		case []any:
			var i int
			for _, r := range seg {
				i = i*10 + int(r-'0')
			}
			if i >= len(c) {
				return nil, false, nil
			}
			cur = c[i]
		default:
			return nil, false, errNotYet("path " + path + " goes through a scalar")
		}
	}
	return cur, true, nil
}
