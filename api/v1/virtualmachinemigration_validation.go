package v1

import (
	"encoding/json"
	"sort"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ValidateVirtualMachineMigration checks a new migration.
func ValidateVirtualMachineMigration(m *VirtualMachineMigration) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if m.Spec.VMName == "" {
		errs = append(errs, field.Required(spec.Child("vmName"), "name the VirtualMachine to migrate"))
	}
	if m.Spec.MaxBandwidth != nil && m.Spec.MaxBandwidth.Sign() <= 0 {
		errs = append(errs, field.Invalid(spec.Child("maxBandwidth"), m.Spec.MaxBandwidth.String(), "must be above 0"))
	}
	return errs
}

// ValidateVirtualMachineMigrationUpdate rejects any change to a migration's
// spec, naming each field that changed.
func ValidateVirtualMachineMigrationUpdate(old, m *VirtualMachineMigration) field.ErrorList {
	if apiequality.Semantic.DeepEqual(old.Spec, m.Spec) {
		return nil
	}
	spec := field.NewPath("spec")
	changed := changedKeys(old.Spec, m.Spec)
	if len(changed) == 0 {
		return field.ErrorList{field.Forbidden(spec, "field is immutable")}
	}
	var errs field.ErrorList
	for _, k := range changed {
		errs = append(errs, field.Forbidden(spec.Child(k), "field is immutable"))
	}
	return errs
}

// changedKeys lists the top-level JSON keys whose values differ between two
// values of the same struct type.
func changedKeys(a, b any) []string {
	am, bm := toJSONMap(a), toJSONMap(b)
	keys := map[string]struct{}{}
	for k := range am {
		keys[k] = struct{}{}
	}
	for k := range bm {
		keys[k] = struct{}{}
	}
	var out []string
	for k := range keys {
		if !apiequality.Semantic.DeepEqual(am[k], bm[k]) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func toJSONMap(v any) map[string]any {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil
	}
	return m
}
