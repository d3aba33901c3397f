package controllers

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"k8s.io/client-go/tools/events"
	"math/big"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachines,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachines/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create

// Condition types and reasons on VirtualMachines.
const (
	ConditionAvailable    = "Available"
	ConditionDegraded     = "Degraded"
	ConditionExtraNetwork = "ExtraNetworkReady"
	reasonReconciling     = "Reconciling"
)

// Requeue intervals (docs/neonvm.md#reconcile; a scaling step is followed up
// sooner than NeonVM's 1 s: reading QEMU back is cheap, and the status
// shows the change that much earlier).
const (
	requeueBusy    = time.Second
	requeueScaling = 200 * time.Millisecond
	requeueIdle    = 15 * time.Second
)

// VMReconciler runs each VirtualMachine in a runner pod and keeps the
// guest's vCPUs and memory equal to its spec (docs/neonvm.md#reconcile).
type VMReconciler struct {
	client.Client
	// APIReader reads around the cache (the manager's GetAPIReader):
	// a pod the cache does not show yet is confirmed gone before the VM
	// is failed for it. Nil: the cached client.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Settings  podspec.Settings
	Metrics   *Metrics
	// MaxConcurrentReconciles is --concurrency-limit.
	MaxConcurrentReconciles int
	// Guest reaches running VMs (QMP and the runner API); nil: the pod IP.
	Guest guestIO
	// IPAM hands out spec.extraNetwork addresses; nil: VMs run without
	// their extra network (ExtraNetworkReady=False says so).
	IPAM *IPAM
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// EventFilter, when set, limits the VMs reconciled (tests share an
	// apiserver with objects that must stay untouched).
	EventFilter predicate.Predicate

	// scalingSince remembers when each VM's spec was first seen to differ
	// from its status, for the scaling latency metric.
	scalingSince sync.Map
}

// SetupWithManager registers the reconciler: VMs, and the pods they own.
func (r *VMReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Guest == nil {
		r.Guest = newPodGuest(r.Metrics)
	}
	return setupReconciler(mgr, "virtualmachine", &vmv1.VirtualMachine{}, r, r.MaxConcurrentReconciles, r.EventFilter)
}

// setupReconciler registers r for kind and the pods kind's objects
// control, at most limit at once, limited by filter when set.
func setupReconciler(mgr ctrl.Manager, name string, kind client.Object, r reconcile.Reconciler, limit int, filter predicate.Predicate) error {
	b := ctrl.NewControllerManagedBy(mgr).
		For(kind).
		Owns(&corev1.Pod{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: atLeastOne(limit)}).
		Named(name)
	if filter != nil {
		b = b.WithEventFilter(filter)
	}
	return b.Complete(r)
}

func (r *VMReconciler) now() time.Time { return clock(r.Now) }

// clock is now, or time.Now when now is nil.
func clock(now func() time.Time) time.Time {
	if now != nil {
		return now()
	}
	return time.Now()
}

func atLeastOne(n int) int {
	if n < 1 {
		return 1
	}
	return n
}

// Reconcile is one pass over a VM, timed.
func (r *VMReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	start := time.Now()
	res, err := r.reconcile(ctx, req)
	outcome := "ok"
	switch {
	case apierrors.IsConflict(err):
		// Someone changed the VM meanwhile: go again with the new one.
		outcome, err, res = "conflict", nil, ctrl.Result{RequeueAfter: time.Millisecond}
	case err != nil:
		outcome = "error"
	}
	r.Metrics.observeReconcile(outcome, time.Since(start))
	return res, err
}

func (r *VMReconciler) reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var vm vmv1.VirtualMachine
	if err := r.Get(ctx, req.NamespacedName, &vm); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get VirtualMachine %s: %w", req.NamespacedName, err)
	}
	if !vm.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, &vm)
	}
	if controllerutil.AddFinalizer(&vm, vmv1.VirtualMachineFinalizer) {
		if err := r.Update(ctx, &vm); err != nil {
			return ctrl.Result{}, fmt.Errorf("add the finalizer: %w", err)
		}
	}
	return r.reconcileNormal(ctx, &vm)
}

// reconcileDelete gives back what the VM holds outside Kubernetes (its
// extra-network address) and lets it go. The runner pod and the SSH secret
// are owned by the VM: the garbage collector removes them.
func (r *VMReconciler) reconcileDelete(ctx context.Context, vm *vmv1.VirtualMachine) (ctrl.Result, error) {
	r.scalingSince.Delete(vm.UID)
	if !controllerutil.ContainsFinalizer(vm, vmv1.VirtualMachineFinalizer) {
		return ctrl.Result{}, nil
	}
	if err := r.releaseExtraNet(ctx, vm); err != nil {
		return ctrl.Result{}, err
	}
	controllerutil.RemoveFinalizer(vm, vmv1.VirtualMachineFinalizer)
	// Gone already: another replica, or a stale cache, removed it last.
	if err := r.Update(ctx, vm); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("remove the finalizer: %w", err)
	}
	return ctrl.Result{}, nil
}

// reconcileNormal runs the phase's step and writes the status it leaves,
// even when the step failed: what it learnt before failing is kept.
func (r *VMReconciler) reconcileNormal(ctx context.Context, vm *vmv1.VirtualMachine) (ctrl.Result, error) {
	before := vm.Status.DeepCopy()
	wait, stepErr := r.step(ctx, vm)
	r.copyRevision(vm)
	if err := r.writeStatus(ctx, vm, before); err != nil {
		return ctrl.Result{}, err
	}
	if stepErr != nil {
		return ctrl.Result{}, stepErr
	}
	return ctrl.Result{RequeueAfter: requeueAfter(vm.Status.Phase, wait)}, nil
}

// writeStatus updates the VM's status when it differs from before, and
// tells of a phase change.
func (r *VMReconciler) writeStatus(ctx context.Context, vm *vmv1.VirtualMachine, before *vmv1.VirtualMachineStatus) error {
	if equality.Semantic.DeepEqual(before, &vm.Status) {
		return nil
	}
	if err := r.Status().Update(ctx, vm); err != nil {
		return fmt.Errorf("update the status: %w", err)
	}
	if before.Phase != vm.Status.Phase {
		log.FromContext(ctx).Info("phase changed", "from", before.Phase, "to", vm.Status.Phase)
		r.event(vm, corev1.EventTypeNormal, "PhaseChanged", "Reconcile", "phase %s -> %s", phaseName(before.Phase), vm.Status.Phase)
	}
	return nil
}

// requeueAfter is the step's wait, or when it named none, soon for a VM
// in transition and seldom for a settled one.
func requeueAfter(phase vmv1.VmPhase, wait time.Duration) time.Duration {
	if wait != 0 {
		return wait
	}
	switch phase {
	case vmv1.VmScaling, vmv1.VmMigrating, vmv1.VmPreMigrating, vmv1.VmPending, "":
		return requeueBusy
	}
	return requeueIdle
}

func phaseName(p vmv1.VmPhase) string {
	if p == "" {
		return "(new)"
	}
	return string(p)
}

func (r *VMReconciler) event(vm *vmv1.VirtualMachine, typ, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(vm, nil, typ, reason, action, note, args...)
	}
}

// step runs the phase function of vm's phase; it returns a requeue wait
// when the phase wants a particular one.
func (r *VMReconciler) step(ctx context.Context, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &vm.Status
	if len(st.Conditions) == 0 {
		setCondition(vm, ConditionAvailable, metav1.ConditionUnknown, "Starting reconciliation")
	}
	if ptr.Deref(vm.Spec.EnableSSH, true) {
		st.SSHSecretName = "ssh-neonvm-" + vm.Name
	} else {
		st.SSHSecretName = ""
	}
	switch st.Phase {
	case "":
		// The extra-network address comes first (docs/neonvm.md#reconcile).
		if ok, err := r.extraNetBeforePod(ctx, vm); !ok || err != nil {
			return requeueIdle, err
		}
		st.Phase = vmv1.VmPending
		return time.Millisecond, nil
	case vmv1.VmPending:
		return r.pending(ctx, vm)
	case vmv1.VmRunning, vmv1.VmScaling:
		r.extraNetWhileRunning(vm)
		return r.running(ctx, vm)
	case vmv1.VmSucceeded, vmv1.VmFailed:
		return r.stopped(ctx, vm)
	}
	// PreMigrating/Migrating belong to the migration reconciler.
	return 0, nil
}

// pending names the runner pod (persisted before the pod exists, so a
// restart never makes a second one), makes the SSH secret and the pod, and
// moves on once the runner is Ready.
func (r *VMReconciler) pending(ctx context.Context, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &vm.Status
	if st.PodName == "" {
		st.PodName = vm.Name + "-" + randomSuffix(5)
		return time.Millisecond, nil
	}
	if st.SSHSecretName != "" {
		if err := r.ensureSSHSecret(ctx, vm); err != nil {
			return 0, err
		}
	}
	pod, err := r.pod(ctx, vm)
	if err != nil {
		return 0, err
	}
	if pod == nil {
		if ok, err := r.extraNetBeforePod(ctx, vm); !ok || err != nil {
			return requeueIdle, err
		}
		want, err := podspec.RunnerPod(vm, st.PodName, r.Settings, false)
		if err != nil {
			setCondition(vm, ConditionDegraded, metav1.ConditionTrue, "runner pod: "+err.Error())
			return requeueIdle, nil
		}
		if err := r.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			if terminating(err) {
				return requeueIdle, nil
			}
			r.event(vm, corev1.EventTypeWarning, "RunnerPodFailed", "Create", "create runner pod %s: %v", st.PodName, err)
			return 0, fmt.Errorf("create runner pod %s: %w", st.PodName, err)
		}
		r.event(vm, corev1.EventTypeNormal, "RunnerPodCreated", "Create", "runner pod %s created", st.PodName)
		return requeueBusy, nil
	}
	if err := r.syncPodMetadata(ctx, vm, pod); err != nil {
		return 0, err
	}
	switch runnerStatus(pod, r.now()) {
	case runnerRunning:
		st.Phase = vmv1.VmRunning
		st.PodIP, st.Node = pod.Status.PodIP, pod.Spec.NodeName
		setCondition(vm, ConditionAvailable, metav1.ConditionTrue, fmt.Sprintf("runner pod %s is ready", pod.Name))
		meta.RemoveStatusCondition(&st.Conditions, ConditionDegraded)
		return time.Millisecond, nil
	case runnerSucceeded:
		st.Phase = vmv1.VmSucceeded
		r.guestStopped(vm, pod)
	case runnerFailed:
		st.Phase = vmv1.VmFailed
		setCondition(vm, ConditionDegraded, metav1.ConditionTrue, fmt.Sprintf("runner pod %s failed before the guest ran: %s", pod.Name, runnerExitSummary(pod)))
		r.guestStopped(vm, pod)
	}
	return 0, nil
}

// guestStopped tells why the runner pod ended, from the runner's report on
// QEMU's end: in an event (the whole report) and in the Available
// condition (its first line).
func (r *VMReconciler) guestStopped(vm *vmv1.VirtualMachine, pod *corev1.Pod) {
	summary := runnerExitSummary(pod)
	typ := corev1.EventTypeWarning
	if strings.Contains(summary, "guest-shutdown") {
		typ = corev1.EventTypeNormal
	}
	report := runnerExit(pod)
	if report == "" {
		report = summary
	}
	report = clipReport(report, maxEventNote)
	r.event(vm, typ, "GuestStopped", "Observe", "runner pod %s: %s", pod.Name, report)
	setCondition(vm, ConditionAvailable, metav1.ConditionFalse, "the guest stopped: "+summary)
}

// clipReport fits the runner's report into max bytes: its first lines (how
// and why QEMU ended, the last events) and the last lines of QEMU's output,
// which tell the most (a panic's message is at the end).
func clipReport(report string, max int) string {
	if len(report) <= max {
		return report
	}
	const sep = runnerapi.ReportOutputSep
	head, output, _ := strings.Cut(report, sep)
	if len(head) > max-len(sep)-64 {
		head = head[:max-len(sep)-64] + "…"
	}
	budget := max - len(head) - len(sep) - len("…\n")
	return head + sep + "…\n" + runnerapi.LastLines(strings.Split(output, "\n"), budget)
}

// maxEventNote is the longest note an event may carry (events.k8s.io/v1
// rejects longer ones), less room for the prefix.
const maxEventNote = 900

// running reads what QEMU and the runner say the guest has into the status
// and, in Scaling, takes the next step towards the spec.
func (r *VMReconciler) running(ctx context.Context, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &vm.Status
	pod, err := r.pod(ctx, vm)
	if err != nil {
		return 0, err
	}
	if pod == nil {
		// The cache may lag (a pod just handed over by a migration):
		// failing a running VM restarts it, so ask the apiserver first.
		if gone, err := podGone(ctx, r.APIReader, vm.Namespace, st.PodName); err != nil || !gone {
			return requeueBusy, err
		}
		st.Phase = vmv1.VmFailed
		setCondition(vm, ConditionDegraded, metav1.ConditionTrue, fmt.Sprintf("runner pod %s is gone", st.PodName))
		return time.Millisecond, nil
	}
	switch runnerStatus(pod, r.now()) {
	case runnerSucceeded:
		st.Phase = vmv1.VmSucceeded
		r.guestStopped(vm, pod)
		return time.Millisecond, nil
	case runnerFailed:
		st.Phase = vmv1.VmFailed
		setCondition(vm, ConditionDegraded, metav1.ConditionTrue, fmt.Sprintf("runner pod %s failed: %s", pod.Name, runnerExitSummary(pod)))
		r.guestStopped(vm, pod)
		return time.Millisecond, nil
	}
	if err := r.syncPodMetadata(ctx, vm, pod); err != nil {
		return 0, err
	}
	st.PodIP, st.Node = pod.Status.PodIP, pod.Spec.NodeName
	mode := cpuScalingMode(vm, r.Settings.DefaultCPUScalingMode)
	o, err := r.Guest.Observe(ctx, vm, mode)
	if err != nil {
		r.event(vm, corev1.EventTypeWarning, "GuestUnreachable", "Observe", "read the guest's resources: %v", err)
		return 5 * time.Second, nil
	}
	cpus := statusCPUs(mode, o)
	st.CPUs, st.MemorySize = &cpus, memoryQuantity(o.Memory)

	if matchesSpec(vm) {
		if st.Phase == vmv1.VmScaling {
			st.Phase = vmv1.VmRunning
		}
		if since, ok := r.scalingSince.LoadAndDelete(vm.UID); ok {
			r.Metrics.observeScaling(mode, r.now().Sub(since.(time.Time)))
		}
		return 0, nil
	}
	r.scalingSince.LoadOrStore(vm.UID, r.now())
	st.Phase = vmv1.VmScaling
	step := planScaling(&vm.Spec, mode, o)
	if step.PlugCPUs > 0 {
		if err := r.Guest.PlugCPUs(ctx, vm, step.PlugCPUs); err != nil {
			r.event(vm, corev1.EventTypeWarning, "QMPFailed", "ScaleCPU", "set the vCPUs to %d: %v", step.PlugCPUs, err)
			return 5 * time.Second, nil
		}
	} else if step.RunnerCPU != nil {
		if err := r.Guest.SetRunnerCPU(ctx, vm, *step.RunnerCPU); err != nil {
			r.event(vm, corev1.EventTypeWarning, "RunnerFailed", "ScaleCPU", "runner /cpu_change to %s: %v", *step.RunnerCPU, err)
			return 5 * time.Second, nil
		}
	}
	if step.MemoryRequested >= 0 {
		if err := r.Guest.SetMemory(ctx, vm, step.MemoryRequested); err != nil {
			r.event(vm, corev1.EventTypeWarning, "QMPFailed", "ScaleMemory", "virtio-mem requested-size %d: %v", step.MemoryRequested, err)
			return 5 * time.Second, nil
		}
	}
	return requeueScaling, nil
}

// stopped deletes the runner pod of a VM whose guest stopped and starts the
// VM again when its restart policy says so.
func (r *VMReconciler) stopped(ctx context.Context, vm *vmv1.VirtualMachine) (time.Duration, error) {
	st := &vm.Status
	pod, err := r.pod(ctx, vm)
	if err != nil {
		return 0, err
	}
	if pod != nil && pod.DeletionTimestamp == nil {
		if err := r.Delete(ctx, pod); client.IgnoreNotFound(err) != nil {
			return 0, fmt.Errorf("delete runner pod %s: %w", pod.Name, err)
		}
		r.event(vm, corev1.EventTypeNormal, "RunnerPodDeleted", "Delete", "runner pod %s deleted: the VM is %s", pod.Name, st.Phase)
	}
	st.PodName, st.PodIP, st.Node, st.CPUs, st.MemorySize = "", "", "", nil, nil
	why := "the guest is not running"
	if c := meta.FindStatusCondition(st.Conditions, ConditionAvailable); c != nil && c.Status == metav1.ConditionFalse && c.Message != "" {
		why = c.Message // the guest stopped: <the runner's report>
	}
	setCondition(vm, ConditionAvailable, metav1.ConditionFalse, why)
	if restarts(ptrOr(vm.Spec.RestartPolicy), st.Phase) {
		st.Phase = vmv1.VmPending
		st.RestartCount++
		r.event(vm, corev1.EventTypeNormal, "Restarting", "Restart", "restart %d (restartPolicy %s); %s", st.RestartCount, vm.Spec.RestartPolicy, why)
		return time.Millisecond, nil
	}
	return 0, nil
}

func ptrOr(p vmv1.RestartPolicy) vmv1.RestartPolicy {
	if p == "" {
		return vmv1.RestartPolicyNever
	}
	return p
}

// copyRevision marks the target revision reached once the VM runs with its
// spec's resources.
func (r *VMReconciler) copyRevision(vm *vmv1.VirtualMachine) {
	t := vm.Spec.TargetRevision
	if t == nil || vm.Status.Phase != vmv1.VmRunning || !matchesSpec(vm) {
		return
	}
	if c := vm.Status.CurrentRevision; c != nil && c.Revision == t.Revision {
		return
	}
	vm.Status.CurrentRevision = &vmv1.RevisionWithTime{Revision: t.Revision, UpdatedAt: metav1.NewTime(r.now())}
}

// pod is the VM's runner pod, nil when there is none. A pod of that name
// not controlled by this VM is an error, never adopted.
func (r *VMReconciler) pod(ctx context.Context, vm *vmv1.VirtualMachine) (*corev1.Pod, error) {
	if vm.Status.PodName == "" {
		return nil, nil
	}
	var pod corev1.Pod
	err := r.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: vm.Status.PodName}, &pod)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get runner pod %s: %w", vm.Status.PodName, err)
	}
	if owner := metav1.GetControllerOf(&pod); owner == nil || owner.UID != vm.UID {
		return nil, fmt.Errorf("pod %s exists but is not controlled by VirtualMachine %s", pod.Name, vm.Name)
	}
	return &pod, nil
}

// podGone says whether the pod really does not exist, asking reader (the
// apiserver, not the cache); a nil reader takes the cache's word.
func podGone(ctx context.Context, reader client.Reader, ns, name string) (bool, error) {
	if reader == nil {
		return true, nil
	}
	var pod corev1.Pod
	err := reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get pod %s from the apiserver: %w", name, err)
	}
	return false, nil
}

// multusPrefix marks pod annotations that the network owns: kept on
// re-sync.
const multusPrefix = "k8s.v1.cni.cncf.io/"

// syncPodMetadata makes the pod's labels and annotations exactly the VM's
// (docs/neonvm.md#labels-and-annotations), keeping the network's own annotations.
func (r *VMReconciler) syncPodMetadata(ctx context.Context, vm *vmv1.VirtualMachine, pod *corev1.Pod) error {
	labels := podspec.Labels(vm)
	annotations, err := podspec.Annotations(vm)
	if err != nil {
		return fmt.Errorf("runner pod %s annotations: %w", pod.Name, err)
	}
	for k, v := range pod.Annotations {
		if strings.HasPrefix(k, multusPrefix) {
			annotations[k] = v
		}
	}
	if equality.Semantic.DeepEqual(labels, nonNil(pod.Labels)) && equality.Semantic.DeepEqual(annotations, nonNil(pod.Annotations)) {
		return nil
	}
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Labels, pod.Annotations = labels, annotations
	if err := r.Patch(ctx, pod, patch); err != nil {
		return fmt.Errorf("re-sync runner pod %s labels and annotations: %w", pod.Name, err)
	}
	return nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// ensureSSHSecret makes the VM's SSH key pair (ed25519) as an immutable
// kubernetes.io/ssh-auth secret owned by the VM, once.
func (r *VMReconciler) ensureSSHSecret(ctx context.Context, vm *vmv1.VirtualMachine) error {
	var s corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: vm.Status.SSHSecretName}, &s)
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get SSH secret %s: %w", vm.Status.SSHSecretName, err)
	}
	pub, priv, err := sshKeyPair()
	if err != nil {
		return fmt.Errorf("SSH secret %s: %w", vm.Status.SSHSecretName, err)
	}
	s = corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: vm.Status.SSHSecretName, Namespace: vm.Namespace},
		Immutable:  ptr.To(true),
		Type:       corev1.SecretTypeSSHAuth,
		Data:       map[string][]byte{"ssh-publickey": pub, corev1.SSHAuthPrivateKey: priv},
	}
	if err := controllerutil.SetControllerReference(vm, &s, r.Scheme()); err != nil {
		return fmt.Errorf("SSH secret %s: %w", s.Name, err)
	}
	if err := r.Create(ctx, &s); err != nil && !apierrors.IsAlreadyExists(err) && !terminating(err) {
		return fmt.Errorf("create SSH secret %s: %w", s.Name, err)
	}
	return nil
}

// terminating says err is the apiserver refusing new objects in a
// namespace being deleted: nothing to retry.
func terminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

// sshKeyPair is a new ed25519 key pair: the public key in authorized_keys
// form, the private key in OpenSSH PEM form.
func sshKeyPair() (pub, priv []byte, err error) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate an ed25519 key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pk)
	if err != nil {
		return nil, nil, fmt.Errorf("SSH public key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(sk, "neonvm")
	if err != nil {
		return nil, nil, fmt.Errorf("SSH private key: %w", err)
	}
	return ssh.MarshalAuthorizedKey(sshPub), pem.EncodeToMemory(block), nil
}

func setCondition(vm *vmv1.VirtualMachine, typ string, status metav1.ConditionStatus, msg string) {
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reasonReconciling, Message: msg, ObservedGeneration: vm.Generation,
	})
}

const suffixChars = "bcdfghjklmnpqrstvwxz2456789"

// randomSuffix is n characters as Kubernetes' generateName uses.
func randomSuffix(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(suffixChars))))
		if err != nil {
			panic(errors.New("no randomness"))
		}
		b.WriteByte(suffixChars[k.Int64()])
	}
	return b.String()
}
