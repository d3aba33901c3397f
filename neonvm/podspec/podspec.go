// Package podspec builds a VirtualMachine's runner pod (docs/neonvm.md#runner-pod)
// as a pure function of the VM and the controller's settings: metadata
// (labels, annotations the scheduler plugin reads, owner), the init
// container that puts the root disk in place, the neonvm-runner container
// with its command line, ports, probe and privileges, and the volumes.
package podspec

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// Settings are the controller's choices for every runner pod.
type Settings struct {
	// RunnerImage is used when the VM names none (env VM_RUNNER_IMAGE).
	RunnerImage string
	// DiskCopyCommand is the init container's command in the root-disk
	// image: it moves /disk.qcow2 to /vm/images/rootdisk.qcow2 (default
	// DefaultDiskCopyCommand, the helper vmscale's root-disk images hold).
	DiskCopyCommand []string
	// QEMUUser is the runner image's user for QEMU (-qemu-user); empty
	// keeps QEMU as root.
	QEMUUser string
	// DiskSyncInterval is how often the runner re-syncs watched disks
	// into the guest (-disk-sync-interval); zero keeps the runner's 30 s.
	DiskSyncInterval time.Duration
	// KVMDevice and VhostNetDevice request the device plugin resources
	// neonvm/kvm and neonvm/vhost-net (off by default: without them the
	// runner runs TCG).
	KVMDevice, VhostNetDevice bool
	// Privileged runs the runner privileged (the local cluster); otherwise
	// it gets NET_ADMIN and SYS_ADMIN, plus SYS_RESOURCE when
	// AddSysResource is set (root here lacks it).
	Privileged, AddSysResource bool
	MemhpAutoMovableRatio      string
	DiskCacheSettings          string
	UseVirtioConsole           bool
	DefaultCPUScalingMode      vmv1.CPUScalingMode
	// ExtraNetworkNAD is the Multus NetworkAttachmentDefinition
	// (namespace/name) of spec.extraNetwork when the VM names none
	// (spec.extraNetwork.multusNetwork).
	ExtraNetworkNAD string
}

// DefaultExtraNetworkNAD is the extra network's NetworkAttachmentDefinition
// when neither the VM nor the controller names one.
const DefaultExtraNetworkNAD = "neonvm-system/neonvm-overlay-net"

// MultusNetworksAnnot asks Multus for the pod's extra interfaces
// (<nad>@<interface>, comma-separated).
const MultusNetworksAnnot = "k8s.v1.cni.cncf.io/networks"

// DefaultDiskCopyCommand is cmd/neonvm-disk-init in vmscale's root-disk
// images.
var DefaultDiskCopyCommand = []string{"/neonvm-disk-init"}

// Labels and annotations on runner pods.
const (
	AppLabel                 = "app.kubernetes.io/name"
	AppLabelValue            = "NeonVM"
	DefaultContainerAnnot    = "kubectl.kubernetes.io/default-container"
	LastAppliedAnnot         = "kubectl.kubernetes.io/last-applied-configuration"
	RunnerContainer          = "neonvm-runner"
	imagesVolume             = "virtualmachineimages"
	imagesPath               = "/vm/images"
	mountsPath               = "/vm/mounts"
	sshSecretVolume          = "ssh-privatekey"
	sshAuthorizedKeysVolume  = "ssh-authorized-keys"
	notReadyTolerationSecond = 30
)

// Usage is the vm.neon.tech/usage annotation.
type Usage struct {
	CPU    vmv1.MilliCPU     `json:"cpu"`
	Memory resource.Quantity `json:"memory"`
}

// Resources is the vm.neon.tech/resources annotation.
type Resources struct {
	CPUs           vmv1.CPUs         `json:"cpus"`
	MemorySlots    vmv1.MemorySlots  `json:"memorySlots"`
	MemorySlotSize resource.Quantity `json:"memorySlotSize"`
}

// Labels are the runner pod's labels: the VM's, plus NeonVM's two.
func Labels(vm *vmv1.VirtualMachine) map[string]string {
	out := map[string]string{}
	for k, v := range vm.Labels {
		out[k] = v
	}
	out[AppLabel] = AppLabelValue
	out[vmv1.VirtualMachineNameLabel] = vm.Name
	return out
}

// Annotations are the runner pod's annotations, re-synced on every
// reconcile: the VM's (without kubectl's last-applied copy), the default
// container, usage, resources and overcommit.
func Annotations(vm *vmv1.VirtualMachine) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range vm.Annotations {
		if k != LastAppliedAnnot {
			out[k] = v
		}
	}
	out[DefaultContainerAnnot] = RunnerContainer
	g := vm.Spec.Guest
	mem := resource.NewQuantity(g.MemorySlotSize.Value()*int64(g.MemorySlots.Use), resource.BinarySI)
	usage, err := json.Marshal(Usage{CPU: g.CPUs.Use, Memory: *mem})
	if err != nil {
		return nil, fmt.Errorf("%s annotation: %w", vmv1.VirtualMachineUsageAnnotation, err)
	}
	out[vmv1.VirtualMachineUsageAnnotation] = string(usage)
	res, err := json.Marshal(Resources{CPUs: g.CPUs, MemorySlots: g.MemorySlots, MemorySlotSize: g.MemorySlotSize})
	if err != nil {
		return nil, fmt.Errorf("%s annotation: %w", vmv1.VirtualMachineResourcesAnnotation, err)
	}
	out[vmv1.VirtualMachineResourcesAnnotation] = string(res)
	if vm.Spec.Overcommit != nil {
		oc, err := json.Marshal(vm.Spec.Overcommit)
		if err != nil {
			return nil, fmt.Errorf("%s annotation: %w", vmv1.VirtualMachineOvercommitAnnotation, err)
		}
		out[vmv1.VirtualMachineOvercommitAnnotation] = string(oc)
	}
	return out, nil
}

// RunnerPod is the pod that runs vm, named podName. A migration target
// passes receiveMigration.
func RunnerPod(vm *vmv1.VirtualMachine, podName string, s Settings, receiveMigration bool) (*corev1.Pod, error) {
	if podName == "" {
		return nil, fmt.Errorf("runner pod for %s/%s: no pod name", vm.Namespace, vm.Name)
	}
	image, err := runnerImage(vm, s)
	if err != nil {
		return nil, err
	}
	annotations, err := podAnnotations(vm, s)
	if err != nil {
		return nil, err
	}
	args, err := runnerArgs(vm, s)
	if err != nil {
		return nil, err
	}
	c := runnerContainer(vm, s, image, args, receiveMigration)
	volumes, mounts := volumes(vm)
	c.VolumeMounts = append(c.VolumeMounts, mounts...)
	spec := vm.Spec
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: podName, Namespace: vm.Namespace,
			Labels: Labels(vm), Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: vmv1.GroupVersion.String(), Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: spec.TerminationGracePeriodSeconds,
			NodeSelector:                  spec.NodeSelector,
			Affinity:                      affinity(vm),
			Tolerations:                   tolerations(spec.Tolerations),
			SchedulerName:                 spec.SchedulerName,
			ServiceAccountName:            spec.ServiceAccountName,
			ImagePullSecrets:              spec.ImagePullSecrets,
			EnableServiceLinks:            spec.ServiceLinks,
			InitContainers:                initContainers(vm, s),
			Containers:                    []corev1.Container{c},
			Volumes:                       volumes,
		},
	}, nil
}

// runnerImage is the VM's runner image, else the controller's.
func runnerImage(vm *vmv1.VirtualMachine, s Settings) (string, error) {
	image := s.RunnerImage
	if vm.Spec.RunnerImage != nil && *vm.Spec.RunnerImage != "" {
		image = *vm.Spec.RunnerImage
	}
	if image == "" {
		return "", fmt.Errorf("runner pod for %s/%s: no runner image (spec.runnerImage or the controller's)", vm.Namespace, vm.Name)
	}
	return image, nil
}

// podAnnotations are Annotations plus the extra network asked of Multus,
// after any networks the VM's own annotation names.
func podAnnotations(vm *vmv1.VirtualMachine, s Settings) (map[string]string, error) {
	annotations, err := Annotations(vm)
	if err != nil {
		return nil, err
	}
	if n := extraNetworkAttachment(vm, s); n != "" {
		if have := annotations[MultusNetworksAnnot]; have != "" {
			n = have + ", " + n
		}
		annotations[MultusNetworksAnnot] = n
	}
	return annotations, nil
}

// imagesMount is where the root disk is put (by the init container) and
// the runner's disks are made.
var imagesMount = corev1.VolumeMount{Name: imagesVolume, MountPath: imagesPath}

// initContainers are the one that puts the root disk in place, from the
// root-disk image, then the VM's own.
func initContainers(vm *vmv1.VirtualMachine, s Settings) []corev1.Container {
	spec := vm.Spec
	pullPolicy := spec.Guest.RootDisk.ImagePullPolicy
	if pullPolicy == "" {
		pullPolicy = corev1.PullIfNotPresent
	}
	copyCmd := s.DiskCopyCommand
	if len(copyCmd) == 0 {
		copyCmd = DefaultDiskCopyCommand
	}
	return append([]corev1.Container{{
		Name: "init", Image: spec.Guest.RootDisk.Image, ImagePullPolicy: pullPolicy,
		Command:         copyCmd,
		VolumeMounts:    []corev1.VolumeMount{imagesMount},
		SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
	}}, spec.ExtraInitContainers...)
}

// runnerContainer is the neonvm-runner container without the mounts of
// volumes: its command line, ports, environment, readiness probe,
// privileges and device resources.
func runnerContainer(vm *vmv1.VirtualMachine, s Settings, image string, args []string, receiveMigration bool) corev1.Container {
	spec := vm.Spec
	runnerPort := port(spec.RunnerPort, vmv1.DefaultRunnerPort)
	c := corev1.Container{
		Name: RunnerContainer, Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
		Command: []string{"/neonvm-runner"}, Args: args,
		Ports: containerPorts(vm),
		Env: []corev1.EnvVar{{Name: runnerapi.EnvPodName, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Resources:    *spec.PodResources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{imagesMount},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: runnerapi.PathReady, Port: intstr.FromInt32(runnerPort)}},
			InitialDelaySeconds: 5, PeriodSeconds: 5, FailureThreshold: 3,
		},
		SecurityContext: securityContext(s),
		// The runner writes why QEMU stopped to /dev/termination-log (the
		// default path); a runner that dies before it can leaves the end
		// of its log instead.
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if receiveMigration {
		c.Env = append(c.Env, corev1.EnvVar{Name: runnerapi.EnvReceiveMigration, Value: "true"})
	}
	for name, on := range map[corev1.ResourceName]bool{"neonvm/kvm": s.KVMDevice && boolOr(spec.EnableAcceleration, true), "neonvm/vhost-net": s.VhostNetDevice} {
		if on {
			if c.Resources.Limits == nil {
				c.Resources.Limits = corev1.ResourceList{}
			}
			c.Resources.Limits[name] = resource.MustParse("1")
		}
	}
	return c
}

// containerPorts are QEMU's QMP ports, the runner API's, and the guest's
// ports (DNATed to the guest from the pod's IP).
func containerPorts(vm *vmv1.VirtualMachine) []corev1.ContainerPort {
	spec := vm.Spec
	ports := []corev1.ContainerPort{
		{Name: "qmp", ContainerPort: port(spec.QMP, vmv1.DefaultQMPPort)},
		{Name: "qmp-manual", ContainerPort: port(spec.QMPManual, vmv1.DefaultQMPManualPort)},
		{Name: "runner", ContainerPort: port(spec.RunnerPort, vmv1.DefaultRunnerPort)},
	}
	for _, p := range spec.Guest.Ports {
		proto := corev1.ProtocolTCP
		if p.Protocol == vmv1.ProtocolUDP {
			proto = corev1.ProtocolUDP
		}
		ports = append(ports, corev1.ContainerPort{Name: p.Name, ContainerPort: int32(p.Port), Protocol: proto})
	}
	return ports
}

// securityContext is privileged where the controller says so (the local
// cluster); otherwise NET_ADMIN and SYS_ADMIN, plus SYS_RESOURCE where the
// controller asks for it.
func securityContext(s Settings) *corev1.SecurityContext {
	if s.Privileged {
		return &corev1.SecurityContext{Privileged: ptr.To(true)}
	}
	caps := []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}
	if s.AddSysResource {
		caps = append(caps, "SYS_RESOURCE")
	}
	return &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: caps}}
}

// volumes are the pod's volumes and the runner container's mounts of them
// besides imagesMount: the SSH keys (when the VM has SSH and its secret)
// and the configMap and secret disks, whose contents the runner puts on
// the guest's disks.
func volumes(vm *vmv1.VirtualMachine) ([]corev1.Volume, []corev1.VolumeMount) {
	spec := vm.Spec
	vols := []corev1.Volume{{Name: imagesVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	var mounts []corev1.VolumeMount
	if boolOr(spec.EnableSSH, true) && vm.Status.SSHSecretName != "" {
		vols = append(vols,
			corev1.Volume{Name: sshSecretVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: vm.Status.SSHSecretName, Items: []corev1.KeyToPath{{Key: "ssh-privatekey", Path: "id_ed25519", Mode: ptr.To[int32](0o600)}}}}},
			corev1.Volume{Name: sshAuthorizedKeysVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: vm.Status.SSHSecretName, Items: []corev1.KeyToPath{{Key: "ssh-publickey", Path: "authorized_keys", Mode: ptr.To[int32](0o644)}}}}})
		mounts = append(mounts,
			corev1.VolumeMount{Name: sshSecretVolume, MountPath: "/mnt/ssh"},
			corev1.VolumeMount{Name: sshAuthorizedKeysVolume, MountPath: "/vm/ssh"})
	}
	for _, d := range spec.Disks {
		var src corev1.VolumeSource
		switch {
		case d.ConfigMap != nil:
			src.ConfigMap = d.ConfigMap.DeepCopy()
		case d.Secret != nil:
			src.Secret = d.Secret.DeepCopy()
		default:
			continue // emptyDisk and tmpfs are made by the runner
		}
		vols = append(vols, corev1.Volume{Name: d.Name, VolumeSource: src})
		mounts = append(mounts, corev1.VolumeMount{Name: d.Name, MountPath: mountsPath + d.MountPath, ReadOnly: true})
	}
	return vols, mounts
}

// extraNetworkAttachment is the Multus network of spec.extraNetwork as
// <nad>@<interface>; empty when the VM has no extra network or no address
// for it yet (the runner bridges the interface to the guest only with an
// address, docs/neonvm.md#network-and-ippool).
func extraNetworkAttachment(vm *vmv1.VirtualMachine, s Settings) string {
	en := vm.Spec.ExtraNetwork
	if en == nil || !en.Enable || vm.Status.ExtraNetIP == "" {
		return ""
	}
	nad := en.MultusNetwork
	if nad == "" {
		nad = s.ExtraNetworkNAD
	}
	if nad == "" {
		nad = DefaultExtraNetworkNAD
	}
	return nad + "@" + ExtraNetworkInterface(vm)
}

// ExtraNetworkInterface is the pod interface of spec.extraNetwork (net1
// unless the VM names another).
func ExtraNetworkInterface(vm *vmv1.VirtualMachine) string {
	if en := vm.Spec.ExtraNetwork; en != nil && en.Interface != "" {
		return en.Interface
	}
	return "net1"
}

// runnerArgs is the runner's command line (docs/neonvm.md#runner-pod).
func runnerArgs(vm *vmv1.VirtualMachine, s Settings) ([]string, error) {
	spec, err := runnerapi.EncodeSpec(vm.Spec)
	if err != nil {
		return nil, fmt.Errorf("encode the spec: %w", err)
	}
	status, err := runnerapi.EncodeSpec(vm.Status)
	if err != nil {
		return nil, fmt.Errorf("encode the status: %w", err)
	}
	mode := s.DefaultCPUScalingMode
	if vm.Spec.CPUScalingMode != nil {
		mode = *vm.Spec.CPUScalingMode
	}
	if mode == "" {
		mode = vmv1.CPUScalingModeQMP
	}
	// The guest's network is the pod's: bridge + tap, DHCP, its ports
	// DNATed from the pod IP (docs/neonvm.md#network-and-ippool).
	args := []string{"-" + runnerapi.FlagSkipCgroupManagement, "-" + runnerapi.FlagPodNetwork}
	if s.QEMUUser != "" {
		args = append(args, "-"+runnerapi.FlagQEMUUser, s.QEMUUser)
	}
	if s.DiskSyncInterval > 0 {
		args = append(args, "-"+runnerapi.FlagDiskSyncInterval, s.DiskSyncInterval.String())
	}
	if s.UseVirtioConsole {
		args = append(args, "-"+runnerapi.FlagUseVirtioConsole)
	}
	if s.DiskCacheSettings != "" {
		args = append(args, "-"+runnerapi.FlagDiskCacheSettings, s.DiskCacheSettings)
	}
	if s.MemhpAutoMovableRatio != "" {
		args = append(args, "-"+runnerapi.FlagMemhpAutoMovableRatio, s.MemhpAutoMovableRatio)
	}
	args = append(args, "-"+runnerapi.FlagVMSpec, spec, "-"+runnerapi.FlagVMStatus, status, "-"+runnerapi.FlagCPUScalingMode, string(mode))
	if vm.Spec.Guest.AppendKernelCmdline != nil && *vm.Spec.Guest.AppendKernelCmdline != "" {
		args = append(args, "-"+runnerapi.FlagAppendKernelCmdline+"="+*vm.Spec.Guest.AppendKernelCmdline)
	}
	return args, nil
}

func affinity(vm *vmv1.VirtualMachine) *corev1.Affinity {
	a := &corev1.Affinity{}
	if vm.Spec.Affinity != nil {
		a = vm.Spec.Affinity.DeepCopy()
	}
	reqs := []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"linux"}}}
	if vm.Spec.TargetArchitecture != nil {
		reqs = append(reqs, corev1.NodeSelectorRequirement{Key: "kubernetes.io/arch", Operator: corev1.NodeSelectorOpIn, Values: []string{string(*vm.Spec.TargetArchitecture)}})
	}
	if a.NodeAffinity == nil {
		a.NodeAffinity = &corev1.NodeAffinity{}
	}
	if a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{}
	}
	terms := &a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(*terms) == 0 {
		*terms = []corev1.NodeSelectorTerm{{}}
	}
	// Terms are ORed: every one must carry the requirements.
	for i := range *terms {
		(*terms)[i].MatchExpressions = append((*terms)[i].MatchExpressions, reqs...)
	}
	return a
}

func tolerations(vmTolerations []corev1.Toleration) []corev1.Toleration {
	out := append([]corev1.Toleration{}, vmTolerations...)
	for _, key := range []string{"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"} {
		out = append(out, corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](notReadyTolerationSecond)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func port(p, def int32) int32 {
	if p == 0 {
		return def
	}
	return p
}

func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}
