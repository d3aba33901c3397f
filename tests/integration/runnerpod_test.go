package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// The runner pod built for every compat VirtualMachine is a pod the real
// apiserver accepts (server-side dry run: full pod validation), both as a
// VM's pod and as a migration target.
func TestRunnerPodsPassAPIServerValidation(t *testing.T) {
	ns := newNamespace(t, "runner-pods")
	files, _ := filepath.Glob(filepath.Join(repoRoot, "testdata", "compat", "manifests", "*.yaml"))
	n := 0
	for _, f := range files {
		for _, obj := range readManifests(t, f) {
			if obj.GetKind() != "VirtualMachine" {
				continue
			}
			raw, _ := json.Marshal(obj.Object)
			vm := &vmv1.VirtualMachine{}
			if err := json.Unmarshal(raw, vm); err != nil {
				t.Fatal(err)
			}
			vm.Namespace, vm.UID = ns, "0b5c7c5e-1111-4222-8333-444455556666"
			vmv1.DefaultVirtualMachine(vm, vmv1.CPUScalingModeQMP)
			vm.Status.SSHSecretName = "ssh-neonvm-" + vm.Name
			for _, target := range []bool{false, true} {
				pod, err := podspec.RunnerPod(vm, vm.Name+"-pod", podspec.Settings{
					RunnerImage: "vmscale/neonvm-runner:dev", DiskCopyCommand: []string{"/disk-copy"}, KVMDevice: true,
				}, target)
				if err != nil {
					t.Fatal(err)
				}
				if err := k8sClient.Create(context.Background(), pod, client.DryRunAll); err != nil {
					t.Errorf("%s (target=%v): the apiserver rejects the runner pod: %v", filepath.Base(f), target, err)
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Fatal("no compat VirtualMachines")
	}
}
