package controllers

import (
	"context"
	"errors"
	"fmt"
	"k8s.io/client-go/tools/events"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/neonvm/qmp"
)

// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachinemigrations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachinemigrations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachinemigrations/finalizers,verbs=update

// ConditionMigration is the migration's condition type.
const ConditionMigration = "Ready"

// DefaultDowntimeLimit is the longest pause QEMU may plan for the final
// copy (docs/design.md#where-vmscale-differs-and-why: upstream sets none).
const DefaultDowntimeLimit = 100 * time.Millisecond

// MigrationReconciler moves a running VM to another runner pod with QEMU
// live migration (docs/neonvm.md#live-migration).
type MigrationReconciler struct {
	client.Client
	// APIReader reads around the cache (see VMReconciler.APIReader).
	APIReader client.Reader
	Recorder  events.EventRecorder
	Settings  podspec.Settings
	Metrics   *Metrics
	// DowntimeLimit is QEMU's downtime-limit (DefaultDowntimeLimit when 0).
	DowntimeLimit time.Duration
	// LiveMigrationUnderTCG migrates a guest QEMU runs under TCG live, as
	// under KVM; off, such a guest is paused for the transfer
	// (docs/design.md#where-vmscale-differs-and-why).
	LiveMigrationUnderTCG   bool
	MaxConcurrentReconciles int
	EventFilter             predicate.Predicate
	Now                     func() time.Time
}

// SetupWithManager registers the reconciler: migrations, and the target
// pods they control.
func (r *MigrationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return setupReconciler(mgr, "virtualmachinemigration", &vmv1.VirtualMachineMigration{}, r, r.MaxConcurrentReconciles, r.EventFilter)
}

func (r *MigrationReconciler) now() time.Time { return clock(r.Now) }

func (r *MigrationReconciler) event(obj client.Object, typ, reason, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(obj, nil, typ, reason, "Migrate", note, args...)
	}
}

// Reconcile is one pass over a migration.
func (r *MigrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var m vmv1.VirtualMachineMigration
	if err := r.Get(ctx, req.NamespacedName, &m); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get VirtualMachineMigration %s: %w", req.NamespacedName, err)
	}
	if !m.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, &m)
	}
	if controllerutil.AddFinalizer(&m, vmv1.VirtualMachineMigrationFinalizer) {
		if err := r.Update(ctx, &m); err != nil {
			return ctrl.Result{}, fmt.Errorf("add the finalizer: %w", err)
		}
	}
	return r.reconcileNormal(ctx, &m)
}

// reconcileNormal runs the phase's step and writes the status it leaves,
// even when the step failed. A conflict, on the migration or its VM, is
// no error: the next pass starts from the objects as they are now.
func (r *MigrationReconciler) reconcileNormal(ctx context.Context, m *vmv1.VirtualMachineMigration) (ctrl.Result, error) {
	before := m.Status.DeepCopy()
	wait, err := r.step(ctx, m)
	if uerr := r.writeStatus(ctx, m, before); uerr != nil {
		err = uerr
	}
	if err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: time.Millisecond}, nil
		}
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: wait}, nil
}

// writeStatus updates the migration's status when it differs from before.
func (r *MigrationReconciler) writeStatus(ctx context.Context, m *vmv1.VirtualMachineMigration, before *vmv1.VirtualMachineMigrationStatus) error {
	if equality.Semantic.DeepEqual(before, &m.Status) {
		return nil
	}
	if err := r.Status().Update(ctx, m); err != nil {
		return fmt.Errorf("update the migration's status: %w", err)
	}
	if before.Phase != m.Status.Phase {
		log.FromContext(ctx).Info("migration phase changed", "from", before.Phase, "to", m.Status.Phase)
	}
	return nil
}

func (r *MigrationReconciler) step(ctx context.Context, m *vmv1.VirtualMachineMigration) (time.Duration, error) {
	switch m.Status.Phase {
	case vmv1.VmmSucceeded:
		return 0, r.deleteSourcePod(ctx, m)
	case vmv1.VmmFailed:
		return 0, r.deleteTargetPod(ctx, m)
	}
	var vm vmv1.VirtualMachine
	if err := r.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMName}, &vm); err != nil {
		if apierrors.IsNotFound(err) {
			r.fail(m, "VMNotFound", fmt.Sprintf("VirtualMachine %s/%s does not exist", m.Namespace, m.Spec.VMName))
			return 0, nil
		}
		return 0, fmt.Errorf("get VirtualMachine %s: %w", m.Spec.VMName, err)
	}
	switch m.Status.Phase {
	case "":
		return r.start(ctx, m, &vm)
	case vmv1.VmmPending:
		return r.pending(ctx, m, &vm)
	case vmv1.VmmRunning:
		return r.running(ctx, m, &vm)
	}
	return 0, nil
}

// start checks that the VM can move, records the source and names the
// target pod (persisted before the pod exists).
func (r *MigrationReconciler) start(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) (time.Duration, error) {
	if vm.Status.Phase != vmv1.VmRunning || vm.Status.PodName == "" {
		// Not a hang: the migration says why and tries again.
		setMigrationCondition(m, metav1.ConditionFalse, "VMNotRunning", fmt.Sprintf("VirtualMachine %s is %s, not Running: waiting to start", vm.Name, phaseName(vm.Status.Phase)))
		return 5 * time.Second, nil
	}
	if owner := metav1.GetControllerOf(m); owner == nil {
		if err := controllerutil.SetControllerReference(vm, m, r.Scheme()); err != nil {
			return 0, fmt.Errorf("make VirtualMachine %s the migration's controller: %w", vm.Name, err)
		}
		if err := r.Update(ctx, m); err != nil {
			return 0, fmt.Errorf("set the migration's controller: %w", err)
		}
	}
	st := &m.Status
	st.SourcePodName, st.SourcePodIP, st.SourceNode = vm.Status.PodName, vm.Status.PodIP, vm.Status.Node
	st.TargetPodName = vm.Name + "-" + randomSuffix(5)
	st.Phase = vmv1.VmmPending
	setMigrationCondition(m, metav1.ConditionUnknown, "Starting", "creating the target pod "+st.TargetPodName)
	// The VM stops scaling while it moves.
	vm.Status.Phase = vmv1.VmPreMigrating
	if err := r.Status().Update(ctx, vm); err != nil {
		return 0, fmt.Errorf("mark the VM PreMigrating: %w", err)
	}
	r.event(m, corev1.EventTypeNormal, "Started", "migrating %s from pod %s on %s", vm.Name, st.SourcePodName, st.SourceNode)
	return time.Millisecond, nil
}

// pending makes the target pod and, once it waits for the migration,
// configures both QEMUs and starts the transfer.
func (r *MigrationReconciler) pending(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &m.Status
	target, err := r.getPod(ctx, m.Namespace, st.TargetPodName)
	if err != nil {
		return 0, err
	}
	if target == nil {
		if c := meta.FindStatusCondition(m.Status.Conditions, ConditionMigration); c != nil && c.Reason == "TargetPodCreated" {
			if gone, err := podGone(ctx, r.APIReader, m.Namespace, st.TargetPodName); err != nil || !gone {
				return time.Second, err // not in the cache yet
			}
			r.failAndRestore(ctx, m, vm, "TargetPodFailed", fmt.Sprintf("target pod %s disappeared before the migration started", st.TargetPodName))
			return 0, nil
		}
		pod, err := r.targetPod(m, vm)
		if err != nil {
			r.failAndRestore(ctx, m, vm, "TargetPodInvalid", err.Error())
			return 0, nil
		}
		if err := r.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
			return 0, fmt.Errorf("create target pod %s: %w", pod.Name, err)
		}
		if err := r.addSourceOwner(ctx, m); err != nil {
			return 0, err
		}
		setMigrationCondition(m, metav1.ConditionUnknown, "TargetPodCreated", "waiting for target pod "+pod.Name)
		r.event(m, corev1.EventTypeNormal, "TargetPodCreated", "target pod %s created", pod.Name)
		return time.Second, nil
	}
	switch runnerStatus(target, r.now()) {
	case runnerSucceeded, runnerFailed:
		r.failAndRestore(ctx, m, vm, "TargetPodFailed", fmt.Sprintf("target pod %s ended (%s) before the migration started: %s", target.Name, target.Status.Phase, runnerExitSummary(target)))
		return 0, nil
	case runnerPending:
		return time.Second, nil
	}
	st.TargetPodIP, st.TargetNode = target.Status.PodIP, target.Spec.NodeName
	if err := r.configureAndMigrate(ctx, m, vm); err != nil {
		r.event(m, corev1.EventTypeWarning, "QMPFailed", "start the migration: %v", err)
		r.failAndRestore(ctx, m, vm, "StartFailed", err.Error())
		return 0, nil
	}
	st.Phase = vmv1.VmmRunning
	setMigrationCondition(m, metav1.ConditionUnknown, "Migrating", fmt.Sprintf("transferring to %s on %s", st.TargetPodName, st.TargetNode))
	vm.Status.Phase = vmv1.VmMigrating
	if err := r.Status().Update(ctx, vm); err != nil {
		return 0, fmt.Errorf("mark the VM Migrating: %w", err)
	}
	r.event(m, corev1.EventTypeNormal, "Migrating", "QEMU migration to %s (%s) started", st.TargetPodName, st.TargetPodIP)
	return time.Second, nil
}

func (r *MigrationReconciler) configureAndMigrate(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) error {
	bw := int64(1 << 30)
	if m.Spec.MaxBandwidth != nil && !m.Spec.MaxBandwidth.IsZero() {
		bw = m.Spec.MaxBandwidth.Value()
	}
	limit := r.DowntimeLimit
	if limit <= 0 {
		limit = DefaultDowntimeLimit
	}
	caps := qmp.MigrationCapabilities{
		"postcopy-ram":  m.Spec.AllowPostCopy,
		"xbzrle":        true,
		"auto-converge": ptr.Deref(m.Spec.AutoConverge, true),
		"zero-blocks":   true,
	}
	params := qmp.MigrationParameters{MaxBandwidth: bw, DowntimeLimitMs: limit.Milliseconds(), XBZRLECacheSize: 256 << 20}
	for _, ip := range []string{m.Status.TargetPodIP, m.Status.SourcePodIP} {
		err := r.qmp(ctx, vm, ip, func(c *timedQMP) error {
			if _, err := timed(c, "migrate-set-capabilities", func() (struct{}, error) { return struct{}{}, c.c.MigrateSetCapabilities(ctx, caps) }); err != nil {
				return err
			}
			_, err := timed(c, "migrate-set-parameters", func() (struct{}, error) { return struct{}{}, c.c.MigrateSetParameters(ctx, params) })
			return err
		})
		if err != nil {
			return fmt.Errorf("QEMU at %s: %w", ip, err)
		}
	}
	uri := "tcp:" + net.JoinHostPort(m.Status.TargetPodIP, strconv.Itoa(int(vmv1.MigrationPort)))
	return r.qmp(ctx, vm, m.Status.SourcePodIP, func(c *timedQMP) error {
		kvm, err := timed(c, "query-kvm", func() (bool, error) { return c.c.QueryKVM(ctx) })
		if err != nil {
			return err
		}
		if !kvm && !r.LiveMigrationUnderTCG {
			// Stop-and-copy (docs/design.md#where-vmscale-differs-and-why): the
			// guest is paused for the whole transfer; the target is
			// resumed once it has everything (resumeIfPaused).
			if _, err := timed(c, "stop", func() (struct{}, error) { return struct{}{}, c.c.Stop(ctx) }); err != nil {
				return err
			}
			r.event(m, corev1.EventTypeNormal, "StopAndCopy", "the source runs under TCG: the guest is paused for the transfer")
		}
		if _, err := timed(c, "migrate", func() (struct{}, error) {
			return struct{}{}, c.c.MigrateWithDisks(ctx, uri, ptr.Deref(m.Spec.Incremental, true))
		}); err != nil {
			return err
		}
		if m.Spec.AllowPostCopy {
			_, err := timed(c, "migrate-start-postcopy", func() (struct{}, error) { return struct{}{}, c.c.MigrateStartPostcopy(ctx) })
			return err
		}
		return nil
	})
}

// running follows the transfer on the source QEMU until it ends.
func (r *MigrationReconciler) running(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &m.Status
	if vm.Status.PodName == st.TargetPodName {
		// A previous pass switched the VM over and did not get to record
		// it (a controller restart): finish.
		return 0, r.succeed(ctx, m, vm, nil)
	}
	target, err := r.getPod(ctx, m.Namespace, st.TargetPodName)
	if err != nil {
		return 0, err
	}
	if target == nil {
		if gone, err := podGone(ctx, r.APIReader, m.Namespace, st.TargetPodName); err != nil || !gone {
			return time.Second, err
		}
	}
	if target == nil || runnerStatus(target, r.now()) == runnerFailed || runnerStatus(target, r.now()) == runnerSucceeded {
		_ = r.qmp(ctx, vm, st.SourcePodIP, func(c *timedQMP) error { return c.c.MigrateCancel(ctx) })
		why := "it is gone"
		if target != nil {
			why = runnerExitSummary(target)
		}
		r.failAndRestore(ctx, m, vm, "TargetPodFailed", fmt.Sprintf("target pod %s died during the migration (%s); cancelled, the VM stays on %s", st.TargetPodName, why, st.SourcePodName))
		return 0, nil
	}
	var info qmp.MigrationInfo
	err = r.qmp(ctx, vm, st.SourcePodIP, func(c *timedQMP) error {
		var err error
		info, err = timed(c, "query-migrate", func() (qmp.MigrationInfo, error) { return c.c.QueryMigrate(ctx) })
		return err
	})
	if err != nil {
		r.event(m, corev1.EventTypeWarning, "QMPFailed", "query-migrate on the source: %v", err)
		return 2 * time.Second, nil
	}
	copyInfo(&st.Info, info)
	switch info.Status {
	case "completed":
		// The source has sent everything; the target may still be loading
		// it ("inmigrate"). Only then is a stop-and-copy guest "paused"
		// there, to be resumed.
		if err := r.resumeIfPaused(ctx, vm, st.TargetPodIP); errors.Is(err, errStillIncoming) {
			return migrationPoll, nil
		} else if err != nil {
			r.event(m, corev1.EventTypeWarning, "QMPFailed", "resume the guest on the target: %v", err)
			return 2 * time.Second, nil
		}
		return 0, r.succeed(ctx, m, vm, &info)
	case "failed", "cancelled":
		_ = r.qmp(ctx, vm, st.TargetPodIP, func(c *timedQMP) error { return c.c.Quit(ctx) })
		r.failAndRestore(ctx, m, vm, "MigrationFailed", fmt.Sprintf("QEMU reports the migration %s: %s", info.Status, info.ErrorDesc))
		return 0, nil
	}
	return migrationPoll, nil
}

// migrationPoll is how often a running migration's query-migrate is read:
// a stop-and-copy migration's guest stays paused until the controller sees
// the transfer completed and resumes it on the target.
const migrationPoll = 250 * time.Millisecond

// errStillIncoming: the target QEMU is still loading the migration.
var errStillIncoming = errors.New("the target is still loading the migration")

// resumeIfPaused resumes the guest of the QEMU at ip when it is paused:
// the target after a stop-and-copy migration (it keeps the source's paused
// state), or the source after one that failed or was cancelled. A guest
// that runs, or a QEMU in any other state, is left alone.
func (r *MigrationReconciler) resumeIfPaused(ctx context.Context, vm *vmv1.VirtualMachine, ip string) error {
	return r.qmp(ctx, vm, ip, func(c *timedQMP) error {
		st, err := timed(c, "query-status", func() (qmp.Status, error) { return c.c.QueryStatus(ctx) })
		if err == nil && st.Status == "inmigrate" {
			return errStillIncoming
		}
		if err != nil || st.Status != "paused" {
			return err
		}
		_, err = timed(c, "cont", func() (struct{}, error) { return struct{}{}, c.c.Cont(ctx) })
		return err
	})
}

// succeed points the VM at the target pod, hands that pod to the VM, stops
// the source QEMU and records the outcome.
func (r *MigrationReconciler) succeed(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine, info *qmp.MigrationInfo) error {
	st := &m.Status
	target, err := r.getPod(ctx, m.Namespace, st.TargetPodName)
	if err != nil {
		return err
	}
	if target != nil {
		patch := client.MergeFrom(target.DeepCopy())
		target.OwnerReferences = nil
		if err := controllerutil.SetControllerReference(vm, target, r.Scheme()); err != nil {
			return fmt.Errorf("hand target pod %s to the VM: %w", target.Name, err)
		}
		if err := r.Patch(ctx, target, patch); err != nil {
			return fmt.Errorf("hand target pod %s to the VM: %w", target.Name, err)
		}
	}
	if vm.Status.PodName != st.TargetPodName {
		vm.Status.PodName, vm.Status.PodIP, vm.Status.Node = st.TargetPodName, st.TargetPodIP, st.TargetNode
		vm.Status.Phase = vmv1.VmRunning
		if err := r.Status().Update(ctx, vm); err != nil {
			return fmt.Errorf("point the VM at its new pod: %w", err)
		}
	}
	// The source's runner ends when its QEMU does.
	_ = r.qmp(ctx, vm, st.SourcePodIP, func(c *timedQMP) error { return c.c.Quit(ctx) })
	st.Phase = vmv1.VmmSucceeded
	setMigrationCondition(m, metav1.ConditionTrue, "Succeeded", fmt.Sprintf("%s runs in %s on %s", vm.Name, st.TargetPodName, st.TargetNode))
	if info != nil {
		r.Metrics.observeMigration("succeeded", time.Duration(info.TotalTimeMs)*time.Millisecond, time.Duration(info.DowntimeMs)*time.Millisecond)
	}
	r.event(m, corev1.EventTypeNormal, "Succeeded", "migrated to %s on %s in %d ms (downtime %d ms)", st.TargetPodName, st.TargetNode, st.Info.TotalTimeMs, st.Info.DowntimeMs)
	r.event(vm, corev1.EventTypeNormal, "Migrated", "now in pod %s on %s", st.TargetPodName, st.TargetNode)
	return nil
}

// fail marks the migration Failed with why.
func (r *MigrationReconciler) fail(m *vmv1.VirtualMachineMigration, reason, msg string) {
	m.Status.Phase = vmv1.VmmFailed
	setMigrationCondition(m, metav1.ConditionFalse, reason, msg)
	r.Metrics.observeMigration("failed", 0, 0)
	r.event(m, corev1.EventTypeWarning, reason, "%s", msg)
}

// failAndRestore fails the migration and leaves the VM Running on its
// source pod.
func (r *MigrationReconciler) failAndRestore(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine, reason, msg string) {
	r.fail(m, reason, msg)
	if err := r.restoreVM(ctx, m, vm); err != nil {
		log.FromContext(ctx).Error(err, "could not set the VM back to Running")
	}
}

func (r *MigrationReconciler) restoreVM(ctx context.Context, m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) error {
	if vm.Status.PodName != m.Status.SourcePodName {
		return nil
	}
	// A stop-and-copy migration that got as far as pausing the source's
	// guest leaves it paused; resumeIfPaused leaves a running one alone.
	if ip := m.Status.SourcePodIP; ip != "" {
		if err := r.resumeIfPaused(ctx, vm, ip); err != nil {
			r.event(m, corev1.EventTypeWarning, "QMPFailed", "resume the guest on the source: %v", err)
		}
	}
	if vm.Status.Phase == vmv1.VmPreMigrating || vm.Status.Phase == vmv1.VmMigrating {
		vm.Status.Phase = vmv1.VmRunning
		if err := r.Status().Update(ctx, vm); err != nil {
			return fmt.Errorf("set VirtualMachine %s back to Running: %w", vm.Name, err)
		}
	}
	return nil
}

// reconcileDelete cancels a migration deleted mid-flight: the transfer
// stops, the VM stays Running on the source and the target pod goes.
func (r *MigrationReconciler) reconcileDelete(ctx context.Context, m *vmv1.VirtualMachineMigration) error {
	if !controllerutil.ContainsFinalizer(m, vmv1.VirtualMachineMigrationFinalizer) {
		return nil
	}
	if m.Status.Phase == vmv1.VmmPending || m.Status.Phase == vmv1.VmmRunning {
		var vm vmv1.VirtualMachine
		err := r.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMName}, &vm)
		if err == nil && vm.Status.PodName == m.Status.SourcePodName {
			if m.Status.Phase == vmv1.VmmRunning {
				if err := r.qmp(ctx, &vm, m.Status.SourcePodIP, func(c *timedQMP) error { return c.c.MigrateCancel(ctx) }); err != nil {
					r.event(m, corev1.EventTypeWarning, "QMPFailed", "migrate_cancel on the source: %v", err)
				}
			}
			if err := r.restoreVM(ctx, m, &vm); err != nil {
				return err
			}
			r.event(&vm, corev1.EventTypeNormal, "MigrationCancelled", "migration %s deleted: the VM stays in %s", m.Name, m.Status.SourcePodName)
		} else if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("get VirtualMachine %s: %w", m.Spec.VMName, err)
		}
		if err := r.deleteTargetPod(ctx, m); err != nil {
			return err
		}
		r.Metrics.observeMigration("cancelled", 0, 0)
	}
	controllerutil.RemoveFinalizer(m, vmv1.VirtualMachineMigrationFinalizer)
	if err := r.Update(ctx, m); err != nil {
		return fmt.Errorf("remove the finalizer: %w", err)
	}
	return nil
}

// targetPod is the VM's runner pod waiting for the migration, controlled
// by the migration (the VM stays an owner so that deleting it cleans up),
// kept off the source's node when the spec says so.
func (r *MigrationReconciler) targetPod(m *vmv1.VirtualMachineMigration, vm *vmv1.VirtualMachine) (*corev1.Pod, error) {
	pod, err := podspec.RunnerPod(vm, m.Status.TargetPodName, r.Settings, true)
	if err != nil {
		return nil, err
	}
	pod.OwnerReferences = nil
	if err := controllerutil.SetControllerReference(m, pod, r.Scheme()); err != nil {
		return nil, err
	}
	if err := controllerutil.SetOwnerReference(vm, pod, r.Scheme()); err != nil {
		return nil, err
	}
	for k, v := range m.Spec.NodeSelector {
		if pod.Spec.NodeSelector == nil {
			pod.Spec.NodeSelector = map[string]string{}
		}
		pod.Spec.NodeSelector[k] = v
	}
	if ptr.Deref(m.Spec.PreventMigrationToSameHost, true) {
		if pod.Spec.Affinity.PodAntiAffinity == nil {
			pod.Spec.Affinity.PodAntiAffinity = &corev1.PodAntiAffinity{}
		}
		pod.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution = append(
			pod.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution, corev1.PodAffinityTerm{
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{vmv1.VirtualMachineNameLabel: vm.Name}},
				TopologyKey:   "kubernetes.io/hostname",
			})
	}
	return pod, nil
}

// addSourceOwner makes the migration an owner (not the controller) of the
// source pod.
func (r *MigrationReconciler) addSourceOwner(ctx context.Context, m *vmv1.VirtualMachineMigration) error {
	src, err := r.getPod(ctx, m.Namespace, m.Status.SourcePodName)
	if err != nil || src == nil {
		return err
	}
	patch := client.MergeFrom(src.DeepCopy())
	if err := controllerutil.SetOwnerReference(m, src, r.Scheme()); err != nil {
		return fmt.Errorf("add the migration to source pod %s's owners: %w", src.Name, err)
	}
	if err := r.Patch(ctx, src, patch); err != nil {
		return fmt.Errorf("add the migration to source pod %s's owners: %w", src.Name, err)
	}
	return nil
}

func (r *MigrationReconciler) deleteSourcePod(ctx context.Context, m *vmv1.VirtualMachineMigration) error {
	return r.deletePod(ctx, m.Namespace, m.Status.SourcePodName)
}

func (r *MigrationReconciler) deleteTargetPod(ctx context.Context, m *vmv1.VirtualMachineMigration) error {
	return r.deletePod(ctx, m.Namespace, m.Status.TargetPodName)
}

func (r *MigrationReconciler) deletePod(ctx context.Context, ns, name string) error {
	if name == "" {
		return nil
	}
	pod, err := r.getPod(ctx, ns, name)
	if err != nil || pod == nil || pod.DeletionTimestamp != nil {
		return err
	}
	if err := r.Delete(ctx, pod); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	return nil
}

func (r *MigrationReconciler) getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if name == "" {
		return nil, nil
	}
	var pod corev1.Pod
	err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get pod %s: %w", name, err)
	}
	return &pod, nil
}

// qmp runs f against the QEMU of the runner pod at ip.
func (r *MigrationReconciler) qmp(ctx context.Context, vm *vmv1.VirtualMachine, ip string, f func(*timedQMP) error) error {
	if ip == "" {
		return errors.New("no pod IP")
	}
	port := vm.Spec.QMP
	if port == 0 {
		port = vmv1.DefaultQMPPort
	}
	start := time.Now()
	c, err := qmp.Dial(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(port))))
	r.Metrics.observeQMP("connect", start, err)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(&timedQMP{c: c, m: r.Metrics})
}

func copyInfo(dst *vmv1.MigrationInfo, src qmp.MigrationInfo) {
	dst.Status, dst.TotalTimeMs, dst.SetupTimeMs, dst.DowntimeMs = src.Status, src.TotalTimeMs, src.SetupTimeMs, src.DowntimeMs
	if src.RAM != nil {
		dst.Ram = vmv1.MigrationInfoRAM{Transferred: src.RAM.Transferred, Remaining: src.RAM.Remaining, Total: src.RAM.Total}
	}
}

func setMigrationCondition(m *vmv1.VirtualMachineMigration, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&m.Status.Conditions, metav1.Condition{
		Type: ConditionMigration, Status: status, Reason: reason, Message: msg, ObservedGeneration: m.Generation,
	})
}
