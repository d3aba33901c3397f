package controllers

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// runnerState is what the VM reconciler makes of its runner pod.
type runnerState string

const (
	runnerPending   runnerState = "Pending"
	runnerRunning   runnerState = "Running"
	runnerSucceeded runnerState = "Succeeded"
	runnerFailed    runnerState = "Failed"
)

// deletionGrace is how long a pod may be terminating before the VM counts
// it as failed.
const deletionGrace = 5 * time.Second

// runnerStatus classifies pod: Running only once the runner container is
// Ready (the guest answers), Failed once its deletion started more than
// deletionGrace ago.
func runnerStatus(pod *corev1.Pod, now time.Time) runnerState {
	if pod.DeletionTimestamp != nil && now.Sub(pod.DeletionTimestamp.Time) > deletionGrace {
		return runnerFailed
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded:
		return runnerSucceeded
	case corev1.PodFailed:
		return runnerFailed
	case corev1.PodRunning:
		for _, c := range pod.Status.ContainerStatuses {
			if c.Name == podspec.RunnerContainer && c.Ready {
				return runnerRunning
			}
		}
	}
	return runnerPending
}

// runnerExit is how the runner container ended, as the kubelet reports it:
// the runner's report on QEMU's end (its termination message: how QEMU
// exited, the SHUTDOWN reason, the last QMP events and output), or else
// the kubelet's reason and exit code; "" while it has not ended.
func runnerExit(pod *corev1.Pod) string {
	for _, c := range pod.Status.ContainerStatuses {
		if c.Name != podspec.RunnerContainer {
			continue
		}
		t := c.State.Terminated
		if t == nil {
			t = c.LastTerminationState.Terminated
		}
		if t == nil {
			return ""
		}
		if msg := strings.TrimSpace(t.Message); msg != "" {
			return msg
		}
		return fmt.Sprintf("the runner container ended: %s, exit code %d", t.Reason, t.ExitCode)
	}
	return ""
}

// runnerExitSummary is the first line of runnerExit, or what is known
// without one.
func runnerExitSummary(pod *corev1.Pod) string {
	msg := runnerExit(pod)
	if msg == "" {
		return fmt.Sprintf("runner pod %s is %s with no report from the runner", pod.Name, pod.Status.Phase)
	}
	first, _, _ := strings.Cut(msg, "\n")
	return first
}

// observed is what QEMU and the runner say the guest has.
type observed struct {
	// RunnerCPU is the runner's /cpu_current: the fraction applied (QMP
	// mode) or the CPUs the guest has online (Sysfs mode).
	RunnerCPU vmv1.MilliCPU
	// PluggedCPUs are the vCPUs QEMU holds (QMP mode).
	PluggedCPUs int
	// Memory is base + plugged memory (query-memory-size-summary).
	Memory int64
	// VirtioMemRequested is the virtio-mem device's requested-size; -1
	// when the VM has no device (memorySlots min == max).
	VirtioMemRequested int64
}

// statusCPUs is status.cpus: the runner's value, capped by the vCPUs QEMU
// has plugged (Sysfs mode: those the runner's value needs).
func statusCPUs(mode vmv1.CPUScalingMode, o observed) vmv1.MilliCPU {
	plugged := o.PluggedCPUs
	if mode == vmv1.CPUScalingModeSysfs {
		plugged = int(o.RunnerCPU.RoundedUp())
	}
	if limit := vmv1.MilliCPU(plugged * 1000); o.RunnerCPU > limit {
		return limit
	}
	return o.RunnerCPU
}

// memoryTarget is the guest's memory when it matches spec, and the
// virtio-mem requested-size that gives it.
func memoryTarget(g *vmv1.Guest) (total, requested int64) {
	slot := g.MemorySlotSize.Value()
	return int64(g.MemorySlots.Use) * slot, int64(g.MemorySlots.Use-g.MemorySlots.Min) * slot
}

// scalingStep is what one Scaling reconcile does, decided from the spec and
// what was observed.
type scalingStep struct {
	// PlugCPUs, when non-zero, is the vCPU count to hot-plug or unplug to
	// over QMP (all of them in this one step).
	PlugCPUs int
	// RunnerCPU, when set, is POSTed to the runner's /cpu_change.
	RunnerCPU *vmv1.MilliCPU
	// MemoryRequested, when >= 0, is the virtio-mem requested-size to set.
	MemoryRequested int64
	// Done says the guest matches the spec: back to Running.
	Done bool
}

// planScaling decides the next scaling step. CPUs: in QMP mode, first the
// plugged count (roundUp(use)), then the runner's fraction; in Sysfs mode
// the runner's value alone. Memory: the requested-size, if it differs; done
// when the guest's total matches.
func planScaling(spec *vmv1.VirtualMachineSpec, mode vmv1.CPUScalingMode, o observed) scalingStep {
	step := scalingStep{MemoryRequested: -1}
	use := spec.Guest.CPUs.Use
	cpuDone := false
	switch mode {
	case vmv1.CPUScalingModeSysfs:
		if o.RunnerCPU != use {
			step.RunnerCPU = &use
		} else {
			cpuDone = true
		}
	default:
		switch want := int(use.RoundedUp()); {
		case o.PluggedCPUs != want:
			step.PlugCPUs = want
		case o.RunnerCPU != use:
			step.RunnerCPU = &use
		default:
			cpuDone = true
		}
	}
	total, requested := memoryTarget(&spec.Guest)
	memDone := o.Memory == total
	if !memDone && o.VirtioMemRequested >= 0 && o.VirtioMemRequested != requested {
		step.MemoryRequested = requested
	}
	step.Done = cpuDone && memDone
	return step
}

// matchesSpec says whether status shows the spec's resources.
func matchesSpec(vm *vmv1.VirtualMachine) bool {
	st := vm.Status
	if st.CPUs == nil || st.MemorySize == nil {
		return false
	}
	total, _ := memoryTarget(&vm.Spec.Guest)
	return *st.CPUs == vm.Spec.Guest.CPUs.Use && st.MemorySize.Value() == total
}

// memoryQuantity is bytes as a BinarySI quantity (status.memorySize).
func memoryQuantity(bytes int64) *resource.Quantity {
	return resource.NewQuantity(bytes, resource.BinarySI)
}

// cpuScalingMode is the VM's mode, defaulting to def.
func cpuScalingMode(vm *vmv1.VirtualMachine, def vmv1.CPUScalingMode) vmv1.CPUScalingMode {
	if vm.Spec.CPUScalingMode != nil && *vm.Spec.CPUScalingMode != "" {
		return *vm.Spec.CPUScalingMode
	}
	if def == "" {
		return vmv1.CPUScalingModeQMP
	}
	return def
}

// restarts says whether a VM that stopped in phase starts again.
func restarts(policy vmv1.RestartPolicy, phase vmv1.VmPhase) bool {
	switch policy {
	case vmv1.RestartPolicyAlways:
		return true
	case vmv1.RestartPolicyOnFailure:
		return phase == vmv1.VmFailed
	}
	return false
}
