package controllers

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/ipam"
)

// Reasons of the ExtraNetworkReady condition.
const (
	ReasonExtraNetAllocated       = "Allocated"
	ReasonExtraNetPoolFull        = "PoolFull"
	ReasonExtraNetIPAMFailed      = "IPAMFailed"
	ReasonExtraNetIPAMDisabled    = "IPAMDisabled"
	ReasonExtraNetRestartRequired = "RestartRequired"
)

// extraNetBeforePod makes the extra-network address right before a runner
// pod is made (phase "" and each restart), since the pod carries it to the
// runner: with spec.extraNetwork enabled the VM's address is acquired (or
// confirmed: the pool is the record, and the VM's status follows it);
// disabled, an address the VM still holds is given back, no pod using it
// any more. ok is false when the pod must wait: the condition says why.
func (r *VMReconciler) extraNetBeforePod(ctx context.Context, vm *vmv1.VirtualMachine) (ok bool, err error) {
	st := &vm.Status
	if !extraNetEnabled(vm) {
		meta.RemoveStatusCondition(&st.Conditions, ConditionExtraNetwork)
		if st.ExtraNetIP == "" || r.IPAM == nil {
			st.ExtraNetIP, st.ExtraNetMask = "", ""
			return true, nil
		}
		if err := r.IPAM.Release(ctx, vm); err != nil {
			return false, fmt.Errorf("release the extra-network address %s: %w", st.ExtraNetIP, err)
		}
		st.ExtraNetIP, st.ExtraNetMask = "", ""
		return true, nil
	}
	if r.IPAM == nil {
		// The pod is made without the extra network; the condition says
		// so rather than holding the VM back.
		st.ExtraNetIP, st.ExtraNetMask = "", ""
		setExtraNetCondition(vm, metav1.ConditionFalse, ReasonExtraNetIPAMDisabled,
			"spec.extraNetwork is enabled but this controller hands out no addresses (no --ipam-range): the VM runs without it")
		return true, nil
	}
	addr, err := r.IPAM.Acquire(ctx, vm)
	switch {
	case errors.Is(err, ipam.ErrPoolFull):
		setExtraNetCondition(vm, metav1.ConditionFalse, ReasonExtraNetPoolFull,
			fmt.Sprintf("IPPool %s: %v; the VM waits for an address", r.IPAM.Pool(), err))
		r.event(vm, corev1.EventTypeWarning, "IPPoolFull", "AcquireIP", "IPPool %s: %v", r.IPAM.Pool(), err)
		return false, nil
	case err != nil:
		setExtraNetCondition(vm, metav1.ConditionFalse, ReasonExtraNetIPAMFailed, err.Error())
		return false, err
	}
	if st.ExtraNetIP != "" && st.ExtraNetIP != addr.IP {
		r.event(vm, corev1.EventTypeWarning, "ExtraNetIPChanged", "AcquireIP",
			"the IPPool gives %s where the status recorded %s (held by another VM now)", addr.IP, st.ExtraNetIP)
	}
	st.ExtraNetIP, st.ExtraNetMask = addr.IP, addr.Mask
	setExtraNetCondition(vm, metav1.ConditionTrue, ReasonExtraNetAllocated,
		fmt.Sprintf("%s/%s from IPPool %s", addr.IP, addr.Mask, r.IPAM.Pool()))
	return true, nil
}

// extraNetWhileRunning keeps the condition truthful between pods: the
// address is attached when a pod is made, so a spec changed since waits for
// the next pod.
func (r *VMReconciler) extraNetWhileRunning(vm *vmv1.VirtualMachine) {
	st := &vm.Status
	switch {
	case extraNetEnabled(vm) && st.ExtraNetIP == "" && r.IPAM != nil:
		setExtraNetCondition(vm, metav1.ConditionFalse, ReasonExtraNetRestartRequired,
			"spec.extraNetwork was enabled after the runner pod was made: the address is allocated for the next one")
	case !extraNetEnabled(vm):
		meta.RemoveStatusCondition(&st.Conditions, ConditionExtraNetwork)
	}
}

// releaseExtraNet gives back whatever the deleted VM holds in the pool,
// whether or not its status recorded it (a controller stopped between the
// pool write and the status write leaves it only in the pool).
func (r *VMReconciler) releaseExtraNet(ctx context.Context, vm *vmv1.VirtualMachine) error {
	if r.IPAM == nil {
		return nil
	}
	if err := r.IPAM.Release(ctx, vm); err != nil {
		return fmt.Errorf("release the extra-network address of a deleted VM: %w", err)
	}
	return nil
}

func extraNetEnabled(vm *vmv1.VirtualMachine) bool {
	return vm.Spec.ExtraNetwork != nil && vm.Spec.ExtraNetwork.Enable
}

func setExtraNetCondition(vm *vmv1.VirtualMachine, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: ConditionExtraNetwork, Status: status, Reason: reason, Message: msg, ObservedGeneration: vm.Generation,
	})
}
