package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestScalingConfigOverrides(t *testing.T) {
	var o ScalingConfig
	if err := json.Unmarshal([]byte(`{"loadAverageFractionTarget":0.7,"enableLFCMetrics":true}`), &o); err != nil {
		t.Fatal(err)
	}
	if got := o.Missing(); len(got) != 8 || got[0] != "memoryUsageFractionTarget" {
		t.Fatalf("missing %v", got)
	}
	d := DefaultScalingConfig()
	if m := d.Missing(); len(m) != 0 {
		t.Fatalf("defaults miss %v", m)
	}
	got := d.WithOverrides(o)
	want := DefaultScalingConfig()
	want.LoadAverageFractionTarget, want.EnableLFCMetrics = ptr(0.7), ptr(true)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	// The result shares nothing with the override or the defaults.
	*o.LoadAverageFractionTarget = 0.1
	if *got.LoadAverageFractionTarget != 0.7 || *d.LoadAverageFractionTarget != 0.9 {
		t.Fatal("override aliased")
	}
}

func TestScalingConfigValidateOnlyWhatIsSet(t *testing.T) {
	if err := (ScalingConfig{LFCMinWaitBeforeDownscaleMinutes: ptr(1)}).Validate(); err != nil {
		t.Fatalf("a lone min wait is checked against nothing: %v", err)
	}
	err := (ScalingConfig{MemoryUsageFractionTarget: ptr(1.0), LFCToMemoryRatio: ptr(0.0)}).Validate()
	if err == nil || err.Error() != ".memoryUsageFractionTarget must be set to value < 1 : .lfcToMemoryRatio must be set to value in (0, 1]" {
		t.Fatalf("err %v", err)
	}
}

func TestResourcesAnnotation(t *testing.T) {
	ann := map[string]string{ApprovedAnnotation: `{"vCPUs":"500m","mem":"1Gi"}`, RequestedAnnotation: `{"vCPUs":"lots"}`}
	r, raw, ok, err := ResourcesAnnotation(ann, ApprovedAnnotation)
	if err != nil || !ok || raw != ann[ApprovedAnnotation] || *r != (Resources{VCPU: 500, Mem: 1 << 30}) {
		t.Fatalf("approved: %v %q %v %v", r, raw, ok, err)
	}
	if r, _, ok, err := ResourcesAnnotation(ann, RequestedAnnotation); r != nil || !ok || err == nil || !strings.HasPrefix(err.Error(), "annotation "+RequestedAnnotation+": ") {
		t.Fatalf("bad requested: %v %v %v", r, ok, err)
	}
	if r, _, ok, err := ResourcesAnnotation(ann, ScalingUnitAnnotation); r != nil || ok || err != nil {
		t.Fatalf("absent: %v %v %v", r, ok, err)
	}
}
