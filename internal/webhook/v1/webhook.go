// Package v1 serves the admission webhooks (defaulting and validation) of
// the vm.neon.tech/v1 kinds; the rules themselves are pure functions in
// api/v1, so the guest and agent builds never link a webhook server.
package v1

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// WebhookConfig configures both kinds' admission webhooks.
// +kubebuilder:object:generate=false
type WebhookConfig struct {
	// DefaultCPUScalingMode fills spec.cpuScalingMode when it is empty
	// (the controller's --default-cpu-scaling-mode).
	DefaultCPUScalingMode vmv1.CPUScalingMode
	// SkipUpdateValidationFor lets update-validation failures through for
	// these objects (an escape hatch for objects stored before a rule
	// existed); each skip emits a SkippedValidation event.
	SkipUpdateValidationFor map[types.NamespacedName]struct{}
	// Recorder receives SkippedValidation events; nil records none.
	Recorder events.EventRecorder
}

// ParseSkipList parses the --skip-update-validation-for flag:
// comma-separated namespace/name pairs.
func ParseSkipList(s string) (map[types.NamespacedName]struct{}, error) {
	out := map[types.NamespacedName]struct{}{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ns, name, ok := strings.Cut(item, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("skip-update-validation-for: %q is not namespace/name", item)
		}
		out[types.NamespacedName{Namespace: ns, Name: name}] = struct{}{}
	}
	return out, nil
}

// SetupWebhooksWithManager registers the defaulting and validating webhooks
// of both kinds on the manager's webhook server.
func SetupWebhooksWithManager(mgr ctrl.Manager, cfg WebhookConfig) error {
	// The VM defaulter patches only the fields it fills, so the object is
	// stored as the user wrote it ("0.25" stays "0.25"); the builder's
	// defaulter would re-encode the whole object.
	mgr.GetWebhookServer().Register(VirtualMachineMutatePath, &webhook.Admission{
		Handler: &vmDefaulter{cfg: cfg, decoder: admission.NewDecoder(mgr.GetScheme())},
	})
	if err := ctrl.NewWebhookManagedBy(mgr, &vmv1.VirtualMachine{}).
		WithValidator(&vmWebhook{cfg}).
		Complete(); err != nil {
		return fmt.Errorf("register VirtualMachine webhooks: %w", err)
	}
	if err := ctrl.NewWebhookManagedBy(mgr, &vmv1.VirtualMachineMigration{}).
		WithDefaulter(&migrationWebhook{cfg}).
		WithValidator(&migrationWebhook{cfg}).
		Complete(); err != nil {
		return fmt.Errorf("register VirtualMachineMigration webhooks: %w", err)
	}
	return nil
}

// Every rule of both kinds' webhooks is about the spec (defaults fill spec
// fields; update validation compares old and new spec), so an update that
// leaves the spec as it was (annotations and labels written by the
// scheduler plugin and the agent, finalizers, owner references) is not sent
// to them: the matchCondition lets the apiserver skip the call. Such
// updates are the bulk of the writes to a busy cluster's VMs (one per
// upscale), and the two webhook round trips were a large part of each.
// +kubebuilder:webhook:path=/mutate-vm-neon-tech-v1-virtualmachine,mutating=true,failurePolicy=fail,sideEffects=None,groups=vm.neon.tech,resources=virtualmachines,verbs=create;update,versions=v1,name=mvirtualmachine.vm.neon.tech,admissionReviewVersions=v1,patch=`{"matchConditions":[{"name":"spec-changed","expression":"request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec"}]}`
// +kubebuilder:webhook:path=/validate-vm-neon-tech-v1-virtualmachine,mutating=false,failurePolicy=fail,sideEffects=None,groups=vm.neon.tech,resources=virtualmachines,verbs=create;update,versions=v1,name=vvirtualmachine.vm.neon.tech,admissionReviewVersions=v1,patch=`{"matchConditions":[{"name":"spec-changed","expression":"request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec"}]}`

// VirtualMachineMutatePath is where the VirtualMachine defaulter is served.
const VirtualMachineMutatePath = "/mutate-vm-neon-tech-v1-virtualmachine"

// +kubebuilder:object:generate=false
type vmDefaulter struct {
	cfg     WebhookConfig
	decoder admission.Decoder
}

func (d *vmDefaulter) Handle(ctx context.Context, req admission.Request) admission.Response {
	var vm vmv1.VirtualMachine
	if err := d.decoder.Decode(req, &vm); err != nil {
		// Schema validation runs after mutating webhooks and rejects the
		// object with the field's name; defaulting has nothing to add.
		logf.FromContext(ctx).V(1).Info("not defaulting an object that does not decode", "error", err.Error())
		return admission.Allowed("not defaulted: " + err.Error())
	}
	var raw map[string]any
	if err := json.Unmarshal(req.Object.Raw, &raw); err != nil {
		return admission.Allowed("not defaulted: " + err.Error())
	}
	var ops []jsonpatch.JsonPatchOperation
	for _, def := range vmv1.DefaultVirtualMachine(&vm, d.cfg.DefaultCPUScalingMode) {
		// A default under a missing parent (no spec.guest at all) is left
		// for schema validation to reject.
		if parentExists(raw, def.Path) {
			ops = append(ops, jsonpatch.NewOperation("add", def.Path, def.Value))
		}
	}
	if len(ops) == 0 {
		return admission.Allowed("")
	}
	return admission.Patched("", ops...)
}

// parentExists reports whether the object or array holding the JSON pointer
// path's last element exists in doc.
func parentExists(doc map[string]any, path string) bool {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var cur any = doc
	for _, seg := range segs[:len(segs)-1] {
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[seg]
			if !ok {
				return false
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(c) {
				return false
			}
			cur = c[i]
		default:
			return false
		}
	}
	switch cur.(type) {
	case map[string]any, []any:
		return true
	}
	return false
}

// +kubebuilder:object:generate=false
type vmWebhook struct{ cfg WebhookConfig }

func (w *vmWebhook) ValidateCreate(_ context.Context, vm *vmv1.VirtualMachine) (admission.Warnings, error) {
	return nil, invalid(vm, vmv1.ValidateVirtualMachine(vm))
}

func (w *vmWebhook) ValidateUpdate(ctx context.Context, old, vm *vmv1.VirtualMachine) (admission.Warnings, error) {
	return w.cfg.skippable(ctx, vm, vmv1.ValidateVirtualMachineUpdate(old, vm))
}

func (w *vmWebhook) ValidateDelete(context.Context, *vmv1.VirtualMachine) (admission.Warnings, error) {
	return nil, nil
}

// +kubebuilder:webhook:path=/mutate-vm-neon-tech-v1-virtualmachinemigration,mutating=true,failurePolicy=fail,sideEffects=None,groups=vm.neon.tech,resources=virtualmachinemigrations,verbs=create;update,versions=v1,name=mvirtualmachinemigration.vm.neon.tech,admissionReviewVersions=v1,patch=`{"matchConditions":[{"name":"spec-changed","expression":"request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec"}]}`
// +kubebuilder:webhook:path=/validate-vm-neon-tech-v1-virtualmachinemigration,mutating=false,failurePolicy=fail,sideEffects=None,groups=vm.neon.tech,resources=virtualmachinemigrations,verbs=create;update,versions=v1,name=vvirtualmachinemigration.vm.neon.tech,admissionReviewVersions=v1,patch=`{"matchConditions":[{"name":"spec-changed","expression":"request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec"}]}`

// +kubebuilder:object:generate=false
type migrationWebhook struct{ cfg WebhookConfig }

// Default does nothing: every migration default is in the CRD schema. The
// path exists because NeonVM serves it.
func (w *migrationWebhook) Default(context.Context, *vmv1.VirtualMachineMigration) error { return nil }

func (w *migrationWebhook) ValidateCreate(_ context.Context, m *vmv1.VirtualMachineMigration) (admission.Warnings, error) {
	return nil, invalid(m, vmv1.ValidateVirtualMachineMigration(m))
}

func (w *migrationWebhook) ValidateUpdate(ctx context.Context, old, m *vmv1.VirtualMachineMigration) (admission.Warnings, error) {
	return w.cfg.skippable(ctx, m, vmv1.ValidateVirtualMachineMigrationUpdate(old, m))
}

func (w *migrationWebhook) ValidateDelete(context.Context, *vmv1.VirtualMachineMigration) (admission.Warnings, error) {
	return nil, nil
}

// +kubebuilder:object:generate=false
type namedObject interface {
	runtime.Object
	GetName() string
	GetNamespace() string
}

// skippable turns update-validation errors into a rejection, unless the object
// is on the skip list: then it is let through with a warning and an event.
func (c WebhookConfig) skippable(ctx context.Context, obj namedObject, errs field.ErrorList) (admission.Warnings, error) {
	if len(errs) == 0 {
		return nil, nil
	}
	key := types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}
	if _, skip := c.SkipUpdateValidationFor[key]; !skip {
		return nil, invalid(obj, errs)
	}
	msg := fmt.Sprintf("update validation skipped for %s: %s", key, errs.ToAggregate().Error())
	logf.FromContext(ctx).Info("skipping update validation", "object", key.String(), "errors", errs.ToAggregate().Error())
	if c.Recorder != nil {
		c.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, "SkippedValidation", "Update", "%s", msg)
	}
	return admission.Warnings{msg}, nil
}

func invalid(obj runtime.Object, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	gvk := vmv1.GroupVersion.WithKind(kindOf(obj))
	name := ""
	if n, ok := obj.(namedObject); ok {
		name = n.GetName()
	}
	return apierrors.NewInvalid(gvk.GroupKind(), name, errs)
}

func kindOf(obj runtime.Object) string {
	switch obj.(type) {
	case *vmv1.VirtualMachine:
		return "VirtualMachine"
	case *vmv1.VirtualMachineMigration:
		return "VirtualMachineMigration"
	}
	return ""
}
