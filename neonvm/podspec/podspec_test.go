package podspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// CompatVMs decodes every VirtualMachine in the compat manifests.
func CompatVMs(t testing.TB, repoRoot string) map[string]*vmv1.VirtualMachine {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(repoRoot, "testdata", "compat", "manifests", "*.yaml"))
	out := map[string]*vmv1.VirtualMachine{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			if obj["kind"] != "VirtualMachine" {
				continue
			}
			j, _ := json.Marshal(obj)
			vm := &vmv1.VirtualMachine{}
			if err := json.Unmarshal(j, vm); err != nil {
				t.Fatal(err)
			}
			vm.Namespace = "default"
			vmv1.DefaultVirtualMachine(vm, vmv1.CPUScalingModeQMP)
			out[filepath.Base(f)] = vm
		}
	}
	if len(out) == 0 {
		t.Fatal("no compat VirtualMachines")
	}
	return out
}

func TestRunnerPodFromCompatManifests(t *testing.T) {
	settings := Settings{RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}}
	for name, vm := range CompatVMs(t, "../..") {
		t.Run(name, func(t *testing.T) {
			vm.Labels = map[string]string{"team": "db"}
			vm.Annotations = map[string]string{"note": "x", LastAppliedAnnot: "{}"}
			vm.Status.SSHSecretName = "ssh-neonvm-" + vm.Name
			pod, err := RunnerPod(vm, vm.Name+"-abcde", settings, false)
			if err != nil {
				t.Fatal(err)
			}
			if pod.Name != vm.Name+"-abcde" || pod.Labels["vm.neon.tech/name"] != vm.Name || pod.Labels["app.kubernetes.io/name"] != "NeonVM" || pod.Labels["team"] != "db" {
				t.Errorf("metadata %+v", pod.ObjectMeta)
			}
			if _, ok := pod.Annotations[LastAppliedAnnot]; ok || pod.Annotations["note"] != "x" || pod.Annotations[DefaultContainerAnnot] != "neonvm-runner" {
				t.Errorf("annotations %v", pod.Annotations)
			}
			var usage map[string]any
			json.Unmarshal([]byte(pod.Annotations["vm.neon.tech/usage"]), &usage)
			g := vm.Spec.Guest
			if usage["memory"] == nil || usage["cpu"] == nil {
				t.Errorf("usage annotation %s", pod.Annotations["vm.neon.tech/usage"])
			}
			if !strings.Contains(pod.Annotations["vm.neon.tech/resources"], `"memorySlotSize":"`+g.MemorySlotSize.String()+`"`) {
				t.Errorf("resources annotation %s", pod.Annotations["vm.neon.tech/resources"])
			}
			if pod.Spec.RestartPolicy != corev1.RestartPolicyNever || *pod.Spec.AutomountServiceAccountToken {
				t.Errorf("pod policy %+v", pod.Spec)
			}
			if ic := pod.Spec.InitContainers[0]; ic.Image != g.RootDisk.Image || ic.Command[0] != "/disk-copy" {
				t.Errorf("init container %+v", ic)
			}
			c := pod.Spec.Containers[0]
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if ports["qmp"] != 20183 || ports["qmp-manual"] != 20184 || ports["runner"] != 25183 || len(c.Ports) != 3+len(g.Ports) {
				t.Errorf("ports %v", c.Ports)
			}
			if c.ReadinessProbe.HTTPGet.Path != "/ready" || c.ReadinessProbe.HTTPGet.Port.IntValue() != 25183 {
				t.Errorf("probe %+v", c.ReadinessProbe)
			}
			var encoded string
			for i, a := range c.Args {
				if a == "-vmspec" {
					encoded = c.Args[i+1]
				}
			}
			var back vmv1.VirtualMachineSpec
			if err := runnerapi.DecodeSpec(encoded, &back); err != nil || back.Guest.CPUs != g.CPUs {
				t.Errorf("-vmspec does not carry the spec: %v", err)
			}
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
			for _, d := range vm.Spec.Disks {
				want := ""
				if d.ConfigMap != nil || d.Secret != nil {
					want = "/vm/mounts" + d.MountPath
				}
				if mounts[d.Name] != want {
					t.Errorf("disk %s mounted at %q; want %q", d.Name, mounts[d.Name], want)
				}
			}
			if mounts["ssh-privatekey"] != "/mnt/ssh" || mounts["ssh-authorized-keys"] != "/vm/ssh" {
				t.Errorf("ssh mounts %v", mounts)
			}
			var noExec int
			for _, tol := range pod.Spec.Tolerations {
				if tol.Effect == corev1.TaintEffectNoExecute && *tol.TolerationSeconds == 30 {
					noExec++
				}
			}
			if noExec != 2 {
				t.Errorf("tolerations %v", pod.Spec.Tolerations)
			}
			req := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions
			if req[0].Key != "kubernetes.io/os" {
				t.Errorf("affinity %v", req)
			}
			if c.SecurityContext.Capabilities == nil || len(c.SecurityContext.Capabilities.Add) != 2 {
				t.Errorf("capabilities %+v", c.SecurityContext)
			}
			if _, ok := c.Resources.Limits["neonvm/kvm"]; ok {
				t.Error("neonvm/kvm requested without the setting")
			}
		})
	}
}

func TestRunnerPodOptions(t *testing.T) {
	vm := CompatVMs(t, "../..")["neon-vm-example.yaml"]
	vm.Spec.TargetArchitecture = ptr.To(vmv1.CPUArchitectureARM64)
	pod, err := RunnerPod(vm, "target", Settings{RunnerImage: "r", KVMDevice: true, VhostNetDevice: true, Privileged: true}, true)
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["RECEIVE_MIGRATION"] != "true" {
		t.Errorf("migration target env %v", c.Env)
	}
	if _, ok := c.Resources.Limits["neonvm/kvm"]; !ok {
		t.Error("no neonvm/kvm limit")
	}
	if _, ok := c.Resources.Limits["neonvm/vhost-net"]; !ok {
		t.Error("no neonvm/vhost-net limit")
	}
	if !*c.SecurityContext.Privileged {
		t.Error("not privileged")
	}
	req := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions
	if len(req) != 2 || req[1].Key != "kubernetes.io/arch" || req[1].Values[0] != "arm64" {
		t.Errorf("arch affinity %v", req)
	}
	if _, err := RunnerPod(vm, "", Settings{RunnerImage: "r"}, false); err == nil {
		t.Error("no pod name accepted")
	}
	if _, err := RunnerPod(vm, "p", Settings{}, false); err == nil || !strings.Contains(err.Error(), "no runner image") {
		t.Errorf("no runner image: %v", err)
	}
}

// The extra network is asked of Multus as <nad>@<interface> once the VM
// has its address: the VM's NAD, else the controller's, else the default;
// a VM's own networks annotation is kept.
func TestRunnerPodExtraNetwork(t *testing.T) {
	base := CompatVMs(t, "../..")
	var vm *vmv1.VirtualMachine
	for _, v := range base {
		vm = v
		break
	}
	for _, c := range []struct {
		name     string
		en       *vmv1.ExtraNetwork
		ip       string
		settings string
		own      string
		want     string
	}{
		{name: "off", en: nil, ip: "", want: ""},
		{name: "disabled", en: &vmv1.ExtraNetwork{Enable: false, Interface: "net1"}, ip: "10.100.0.1", want: ""},
		{name: "no address yet", en: &vmv1.ExtraNetwork{Enable: true, Interface: "net1"}, ip: "", want: ""},
		{name: "default NAD", en: &vmv1.ExtraNetwork{Enable: true}, ip: "10.100.0.1", want: "neonvm-system/neonvm-overlay-net@net1"},
		{name: "controller NAD", en: &vmv1.ExtraNetwork{Enable: true, Interface: "net1"}, ip: "10.100.0.1", settings: "ops/overlay",
			want: "ops/overlay@net1"},
		{name: "VM NAD and interface", en: &vmv1.ExtraNetwork{Enable: true, Interface: "ovl0", MultusNetwork: "db/vxlan"}, ip: "10.100.0.1",
			settings: "ops/overlay", want: "db/vxlan@ovl0"},
		{name: "VM's own networks kept", en: &vmv1.ExtraNetwork{Enable: true}, ip: "10.100.0.1", own: "db/storage@net9",
			want: "db/storage@net9, neonvm-system/neonvm-overlay-net@net1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := vm.DeepCopy()
			v.Spec.ExtraNetwork, v.Status.ExtraNetIP, v.Status.ExtraNetMask = c.en, c.ip, "255.255.0.0"
			if c.own != "" {
				v.Annotations = map[string]string{MultusNetworksAnnot: c.own}
			}
			pod, err := RunnerPod(v, "db-abcde", Settings{RunnerImage: "r", ExtraNetworkNAD: c.settings}, false)
			if err != nil {
				t.Fatal(err)
			}
			if got := pod.Annotations[MultusNetworksAnnot]; got != c.want {
				t.Errorf("%s = %q, want %q", MultusNetworksAnnot, got, c.want)
			}
		})
	}
}

// What the VM overrides or turns off in its pod, and the controller's
// capability setting: the branches the compat manifests do not reach.
func TestRunnerPodVMOverrides(t *testing.T) {
	vm := CompatVMs(t, "../..")["neon-vm-example.yaml"].DeepCopy()
	vm.Spec.RunnerImage = ptr.To("own-runner")
	vm.Spec.EnableSSH = ptr.To(false)
	vm.Spec.EnableAcceleration = ptr.To(false)
	vm.Status.SSHSecretName = "ssh-" + vm.Name
	vm.Spec.Guest.RootDisk.ImagePullPolicy = corev1.PullAlways
	vm.Spec.Guest.Ports = append(vm.Spec.Guest.Ports, vmv1.Port{Name: "dns", Port: 53, Protocol: vmv1.ProtocolUDP})
	vm.Spec.ExtraInitContainers = []corev1.Container{{Name: "prepare", Image: "busybox"}}
	pod, err := RunnerPod(vm, "p", Settings{RunnerImage: "r", KVMDevice: true, AddSysResource: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	if c.Image != "own-runner" {
		t.Errorf("runner image %q; want the VM's", c.Image)
	}
	if caps := c.SecurityContext.Capabilities; caps == nil || len(caps.Add) != 3 || caps.Add[2] != "SYS_RESOURCE" {
		t.Errorf("capabilities %+v; want SYS_RESOURCE added", c.SecurityContext)
	}
	if _, ok := c.Resources.Limits["neonvm/kvm"]; ok {
		t.Error("neonvm/kvm requested for a VM with acceleration off")
	}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == vm.Status.SSHSecretName {
			t.Errorf("SSH volume %s with SSH off", v.Name)
		}
	}
	if last := c.Ports[len(c.Ports)-1]; last.Name != "dns" || last.Protocol != corev1.ProtocolUDP || last.ContainerPort != 53 {
		t.Errorf("guest UDP port as %+v", last)
	}
	ics := pod.Spec.InitContainers
	if len(ics) != 2 || ics[0].Name != "init" || ics[0].ImagePullPolicy != corev1.PullAlways || ics[1].Name != "prepare" {
		t.Errorf("init containers %+v; want the disk copy (PullAlways) then the VM's", ics)
	}
	if c.VolumeMounts[0].Name != "virtualmachineimages" || pod.Spec.Volumes[0].EmptyDir == nil {
		t.Errorf("images volume not first: %+v / %+v", c.VolumeMounts, pod.Spec.Volumes)
	}
}
