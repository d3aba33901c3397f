package vminfo

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

const vectors = "../../../testdata/compat/vectors/vm-annotations"

type vector struct {
	Annotation   string     `json:"annotation"`
	Input        string     `json:"input"`
	Error        string     `json:"error"`
	Output       string     `json:"output"`
	VMSpecGuest  vmv1.Guest `json:"vmSpecGuest"`
	OutputParsed *struct {
		CPU struct{ Min, Max, Use vmv1.MilliCPU } `json:"cpu"`
		Mem struct {
			Min, Max, Use int32
			SlotSize      api.Bytes `json:"slotSize"`
		} `json:"mem"`
		Config struct {
			ScalingConfig *api.ScalingConfig `json:"scalingConfig"`
		} `json:"config"`
	} `json:"outputParsed"`
}

// TestAnnotationVectors checks every accepted and rejected annotation of
// Neon's ExtractVmInfo: accepted ones give the same bounds and config,
// rejected ones the same error text.
func TestAnnotationVectors(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(vectors, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors in %s: %v", vectors, err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".json"), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var v vector
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "vm-test",
				Annotations: map[string]string{v.Annotation: v.Input}}}
			vm.Spec.Guest = v.VMSpecGuest
			defaults := api.DefaultScalingConfig()
			info, err := Extract(vm, defaults)
			if v.Error != "" {
				if err == nil {
					t.Fatalf("accepted; Neon rejects it with %q", v.Error)
				}
				if err.Error() != v.Error {
					t.Fatalf("error\n got %q\nwant %q", err.Error(), v.Error)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			want := v.OutputParsed
			slot := want.Mem.SlotSize
			if info.Min != (api.Resources{VCPU: want.CPU.Min, Mem: slot * api.Bytes(want.Mem.Min)}) ||
				info.Max != (api.Resources{VCPU: want.CPU.Max, Mem: slot * api.Bytes(want.Mem.Max)}) ||
				info.Using != (api.Resources{VCPU: want.CPU.Use, Mem: slot * api.Bytes(want.Mem.Use)}) || info.SlotSize != slot {
				t.Fatalf("info %+v, want %+v", info, want)
			}
			wantCfg := defaults
			if sc := want.Config.ScalingConfig; sc != nil {
				wantCfg = defaults.WithOverrides(*sc)
			}
			if !reflect.DeepEqual(info.Scaling, wantCfg) {
				t.Fatalf("scaling config %+v, want %+v", info.Scaling, wantCfg)
			}
		})
	}
}

func TestPartialConfigOverridesOnlyItsFields(t *testing.T) {
	vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
		api.ConfigAnnotation: `{"loadAverageFractionTarget":0.7,"enableLFCMetrics":true}`}}}
	vm.Spec.Guest.CPUs = vmv1.CPUs{Min: 250, Max: 1000, Use: 250}
	vm.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 1, Max: 4, Use: 1}
	vm.Spec.Guest.MemorySlotSize.Set(1 << 30)
	info, err := Extract(vm, api.DefaultScalingConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := api.DefaultScalingConfig()
	lat, lfc := 0.7, true
	want.LoadAverageFractionTarget, want.EnableLFCMetrics = &lat, &lfc
	if !reflect.DeepEqual(info.Scaling, want) {
		t.Fatalf("got %+v", info.Scaling)
	}
}

func TestOurs(t *testing.T) {
	base := func() *vmv1.VirtualMachine {
		vm := &vmv1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{api.EnabledLabel: "true"}}}
		vm.Spec.SchedulerName = "autoscale-scheduler"
		vm.Status = vmv1.VirtualMachineStatus{Phase: vmv1.VmRunning, Node: "n1", PodIP: "10.0.0.1"}
		return vm
	}
	if !Ours(base(), "n1", "autoscale-scheduler") {
		t.Fatal("a running, labelled VM on our node is not ours")
	}
	for name, mut := range map[string]func(*vmv1.VirtualMachine){
		"other node":  func(vm *vmv1.VirtualMachine) { vm.Status.Node = "n2" },
		"migrating":   func(vm *vmv1.VirtualMachine) { vm.Status.Phase = vmv1.VmMigrating },
		"pending":     func(vm *vmv1.VirtualMachine) { vm.Status.Phase = vmv1.VmPending },
		"no pod IP":   func(vm *vmv1.VirtualMachine) { vm.Status.PodIP = "" },
		"not enabled": func(vm *vmv1.VirtualMachine) { vm.Labels[api.EnabledLabel] = "false" },
		"scheduler":   func(vm *vmv1.VirtualMachine) { vm.Spec.SchedulerName = "default-scheduler" },
	} {
		vm := base()
		mut(vm)
		if Ours(vm, "n1", "autoscale-scheduler") {
			t.Errorf("%s: counted as ours", name)
		}
	}
}
