package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

func spec(use vmv1.MilliCPU, slots int32) *vmv1.VirtualMachineSpec {
	return &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		CPUs:           vmv1.CPUs{Min: 1000, Max: 4000, Use: use},
		MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 8, Use: slots},
	}}
}

const mib = 1 << 20

func TestPlanScaling(t *testing.T) {
	qmp, sysfs := vmv1.CPUScalingModeQMP, vmv1.CPUScalingModeSysfs
	m := func(v vmv1.MilliCPU) *vmv1.MilliCPU { return &v }
	for _, c := range []struct {
		name string
		spec *vmv1.VirtualMachineSpec
		mode vmv1.CPUScalingMode
		o    observed
		want scalingStep
	}{
		{"matches", spec(2000, 4), qmp, observed{RunnerCPU: 2000, PluggedCPUs: 2, Memory: 1024 * mib, VirtioMemRequested: 512 * mib},
			scalingStep{MemoryRequested: -1, Done: true}},
		{"plug all needed vCPUs in one step", spec(3500, 2), qmp, observed{RunnerCPU: 1000, PluggedCPUs: 1, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{PlugCPUs: 4, MemoryRequested: -1}},
		{"then the runner's fraction", spec(3500, 2), qmp, observed{RunnerCPU: 1000, PluggedCPUs: 4, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{RunnerCPU: m(3500), MemoryRequested: -1}},
		{"unplug", spec(1000, 2), qmp, observed{RunnerCPU: 3000, PluggedCPUs: 3, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{PlugCPUs: 1, MemoryRequested: -1}},
		{"sysfs goes through the runner", spec(1500, 2), sysfs, observed{RunnerCPU: 1000, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{RunnerCPU: m(1500), MemoryRequested: -1}},
		{"memory up: requested-size from min", spec(1000, 6), qmp, observed{RunnerCPU: 1000, PluggedCPUs: 1, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{MemoryRequested: 1024 * mib}},
		{"memory requested, guest not there yet: wait", spec(1000, 6), qmp, observed{RunnerCPU: 1000, PluggedCPUs: 1, Memory: 1000 * mib, VirtioMemRequested: 1024 * mib},
			scalingStep{MemoryRequested: -1}},
		{"both at once", spec(2000, 3), sysfs, observed{RunnerCPU: 1000, Memory: 512 * mib, VirtioMemRequested: 0},
			scalingStep{RunnerCPU: m(2000), MemoryRequested: 256 * mib}},
		{"no virtio-mem device: no memory call", spec(1000, 3), qmp, observed{RunnerCPU: 1000, PluggedCPUs: 1, Memory: 512 * mib, VirtioMemRequested: -1},
			scalingStep{MemoryRequested: -1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := planScaling(c.spec, c.mode, c.o)
			if got.PlugCPUs != c.want.PlugCPUs || got.MemoryRequested != c.want.MemoryRequested || got.Done != c.want.Done ||
				(got.RunnerCPU == nil) != (c.want.RunnerCPU == nil) || (got.RunnerCPU != nil && *got.RunnerCPU != *c.want.RunnerCPU) {
				t.Errorf("got %+v (runner %v), want %+v (runner %v)", got, got.RunnerCPU, c.want, c.want.RunnerCPU)
			}
		})
	}
}

func TestStatusCPUs(t *testing.T) {
	for _, c := range []struct {
		mode vmv1.CPUScalingMode
		o    observed
		want vmv1.MilliCPU
	}{
		{vmv1.CPUScalingModeQMP, observed{RunnerCPU: 1500, PluggedCPUs: 2}, 1500},
		{vmv1.CPUScalingModeQMP, observed{RunnerCPU: 3000, PluggedCPUs: 2}, 2000}, // capped by what QEMU holds
		{vmv1.CPUScalingModeQMP, observed{RunnerCPU: 1000, PluggedCPUs: 3}, 1000},
		{vmv1.CPUScalingModeSysfs, observed{RunnerCPU: 2000}, 2000},
	} {
		if got := statusCPUs(c.mode, c.o); got != c.want {
			t.Errorf("%s %+v: %s, want %s", c.mode, c.o, got, c.want)
		}
	}
}

func TestRunnerStatus(t *testing.T) {
	now := time.Unix(1000, 0)
	ready := corev1.ContainerStatus{Name: podspec.RunnerContainer, Ready: true}
	notReady := corev1.ContainerStatus{Name: podspec.RunnerContainer}
	pod := func(phase corev1.PodPhase, cs []corev1.ContainerStatus, deleting time.Duration) *corev1.Pod {
		p := &corev1.Pod{Status: corev1.PodStatus{Phase: phase, ContainerStatuses: cs}}
		if deleting > 0 {
			p.DeletionTimestamp = &metav1.Time{Time: now.Add(-deleting)}
		}
		return p
	}
	for _, c := range []struct {
		pod  *corev1.Pod
		want runnerState
	}{
		{pod(corev1.PodPending, nil, 0), runnerPending},
		{pod(corev1.PodRunning, []corev1.ContainerStatus{notReady}, 0), runnerPending},
		{pod(corev1.PodRunning, []corev1.ContainerStatus{ready}, 0), runnerRunning},
		{pod(corev1.PodRunning, []corev1.ContainerStatus{ready}, 2*time.Second), runnerRunning},
		{pod(corev1.PodRunning, []corev1.ContainerStatus{ready}, 6*time.Second), runnerFailed},
		{pod(corev1.PodSucceeded, nil, 0), runnerSucceeded},
		{pod(corev1.PodFailed, nil, 0), runnerFailed},
	} {
		if got := runnerStatus(c.pod, now); got != c.want {
			t.Errorf("%s %v deleting=%v: %s, want %s", c.pod.Status.Phase, c.pod.Status.ContainerStatuses, c.pod.DeletionTimestamp, got, c.want)
		}
	}
}

func TestRestarts(t *testing.T) {
	for _, c := range []struct {
		policy vmv1.RestartPolicy
		phase  vmv1.VmPhase
		want   bool
	}{
		{vmv1.RestartPolicyAlways, vmv1.VmSucceeded, true},
		{vmv1.RestartPolicyAlways, vmv1.VmFailed, true},
		{vmv1.RestartPolicyOnFailure, vmv1.VmFailed, true},
		{vmv1.RestartPolicyOnFailure, vmv1.VmSucceeded, false},
		{vmv1.RestartPolicyNever, vmv1.VmFailed, false},
	} {
		if got := restarts(c.policy, c.phase); got != c.want {
			t.Errorf("%s after %s: %v", c.policy, c.phase, got)
		}
	}
}

func TestMatchesSpecAndRevision(t *testing.T) {
	vm := &vmv1.VirtualMachine{Spec: *spec(1500, 4)}
	if matchesSpec(vm) {
		t.Error("a VM with no status matches")
	}
	cpus := vmv1.MilliCPU(1500)
	vm.Status.CPUs, vm.Status.MemorySize = &cpus, memoryQuantity(1024*mib)
	if !matchesSpec(vm) {
		t.Error("status equal to spec does not match")
	}
	r := &VMReconciler{Now: func() time.Time { return time.Unix(5, 0) }}
	vm.Spec.TargetRevision = &vmv1.RevisionWithTime{Revision: vmv1.Revision{Value: 7, Flags: 1}}
	vm.Status.Phase = vmv1.VmScaling
	r.copyRevision(vm)
	if vm.Status.CurrentRevision != nil {
		t.Error("revision copied while Scaling")
	}
	vm.Status.Phase = vmv1.VmRunning
	r.copyRevision(vm)
	if c := vm.Status.CurrentRevision; c == nil || c.Revision.Value != 7 || c.Revision.Flags != 1 || !c.UpdatedAt.Equal(&metav1.Time{Time: time.Unix(5, 0)}) {
		t.Errorf("current revision %+v", vm.Status.CurrentRevision)
	}
}

func TestSSHKeyPair(t *testing.T) {
	pub, priv, err := sshKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	if len(pub) < 60 || string(pub[:12]) != "ssh-ed25519 " {
		t.Errorf("public key %q", pub)
	}
	if len(priv) < 100 || string(priv[:35]) != "-----BEGIN OPENSSH PRIVATE KEY-----" {
		t.Errorf("private key starts %q", priv[:35])
	}
}
