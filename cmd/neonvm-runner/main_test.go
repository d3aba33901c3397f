package main

import (
	"flag"
	"io"
	"log/slog"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// The command line and environment the controller gives the runner pod
// are what neonvm-runner parses: every flag it passes is defined, and each
// value arrives where the runner reads it.
func TestControllerPodCommandLineParses(t *testing.T) {
	vm := &vmv1.VirtualMachine{}
	vm.Name, vm.Namespace = "db", "default"
	vm.Spec.Guest = vmv1.Guest{
		CPUs: vmv1.CPUs{Min: 1000, Max: 4000, Use: 2000}, MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots: vmv1.MemorySlots{Min: 2, Max: 8, Use: 4}, RootDisk: vmv1.RootDisk{Image: "vm-postgres"},
		AppendKernelCmdline: ptr.To("quiet loglevel=3"),
	}
	vm.Spec.CPUScalingMode = ptr.To(vmv1.CPUScalingModeSysfs)
	vm.Status.ExtraNetIP = "10.100.0.5"
	s := podspec.Settings{
		RunnerImage: "r", QEMUUser: "qemu", DiskSyncInterval: 7 * time.Second, UseVirtioConsole: true,
		DiskCacheSettings: "cache=writeback", MemhpAutoMovableRatio: "801",
	}
	pod, err := podspec.RunnerPod(vm, "db-abcde", s, true)
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]

	var o options
	fs := flag.NewFlagSet("neonvm-runner", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.register(fs)
	if err := fs.Parse(c.Args); err != nil {
		t.Fatalf("neonvm-runner rejects the controller's command line %q: %v", c.Args, err)
	}
	if fs.NArg() != 0 {
		t.Errorf("arguments left over: %q", fs.Args())
	}
	env := map[string]string{runnerapi.EnvPodName: "db-abcde"} // the downward API's
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	cfg := o.config(func(k string) string { return env[k] }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if cfg.QEMUUser != "qemu" || cfg.DiskSyncInterval != 7*time.Second || !cfg.UseVirtioConsole || cfg.DiskCache != "cache=writeback" ||
		cfg.MemhpAutoMovableRatio != "801" || cfg.AppendKernelCmdline != "quiet loglevel=3" || !cfg.PodNetwork ||
		cfg.CPUScalingMode != vmv1.CPUScalingModeSysfs || !cfg.ReceiveMigration || cfg.PodName != "db-abcde" {
		t.Errorf("runner config from the pod: %+v", cfg)
	}
	if err := runnerapi.DecodeSpec(o.vmspec, &cfg.Spec); err != nil || cfg.Spec.Guest.CPUs != vm.Spec.Guest.CPUs {
		t.Errorf("-vmspec: %v (%+v)", err, cfg.Spec.Guest.CPUs)
	}
	if err := runnerapi.DecodeSpec(o.vmstatus, &cfg.Status); err != nil || cfg.Status.ExtraNetIP != "10.100.0.5" {
		t.Errorf("-vmstatus: %v (%+v)", err, cfg.Status)
	}
	var fromDownwardAPI bool
	for _, e := range c.Env {
		if e.Name == runnerapi.EnvPodName && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fromDownwardAPI = e.ValueFrom.FieldRef.FieldPath == "metadata.name"
		}
	}
	if !fromDownwardAPI {
		t.Errorf("%s not from the pod's name: %+v", runnerapi.EnvPodName, c.Env)
	}
}
