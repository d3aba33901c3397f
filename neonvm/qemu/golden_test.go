package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

type goldenCase struct {
	name string
	vm   *vmv1.VirtualMachine
	cfg  Config
}

// goldenCases cover every branch of Build: the minimal command line, and
// one with every option on.
func goldenCases() []goldenCase {
	full := testVM()
	full.Spec.QMP, full.Spec.QMPManual = 30183, 30184
	full.Spec.Guest.AppendKernelCmdline = ptr.To("quiet")
	full.Spec.Guest.MemhpAutoMovableRatio = ptr.To("801")
	fullCfg := testConfig()
	fullCfg.Accel = AccelKVM
	fullCfg.RunAs = "qemu"
	fullCfg.QMPHost = "127.0.0.1"
	fullCfg.QMPSigtermSocket = "/vm/qmp-sigterm.sock"
	fullCfg.LogSocket = "/vm/log.sock"
	fullCfg.ExecSocket = "/vm/exec.sock"
	fullCfg.Init = "/sbin/init"
	fullCfg.ExtraKernelArgs = []string{"debug"}
	fullCfg.UseVirtioConsole = true
	fullCfg.DiskCache = "cache=writeback"
	fullCfg.Disks = []Disk{
		{ID: "runtime", Path: "/vm/images/runtime.iso", CDROM: true},
		{ID: "swap", Path: "/vm/images/swap.qcow2", Discard: true},
		{ID: "data", Path: "/vm/images/data.qcow2", ReadOnly: true},
	}
	fullCfg.Network = Network{TapName: "tap0", VhostNet: true, MAC: "02:00:00:00:00:01"}
	fullCfg.ExtraNIC = &ExtraNIC{TapName: "tap-overlay", VhostNet: true, MAC: "02:00:0a:64:00:05", MTU: 1450, IP: "10.100.0.5", Mask: "255.255.0.0", Hostname: "db-abcde"}
	fullCfg.Incoming = "tcp:0:20187"
	fullCfg.HotpluggedCPUs = []int{1}
	fullCfg.CPUDriver = CPUDriver("amd64")
	fullCfg.VirtioMemRequestedBytes = 512 << 20

	forwards := testConfig()
	forwards.TCGTranslationCacheMiB = 64
	forwards.InitrdPath = ""
	forwards.Network = Network{Forwards: []Forward{{HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22}, {HostAddr: "0.0.0.0", HostPort: 5432, GuestPort: 5432}}}

	sysfs := testVM()
	sysfs.Spec.CPUScalingMode = ptr.To(vmv1.CPUScalingModeSysfs)
	sysfs.Spec.Guest.MemorySlots = vmv1.MemorySlots{Min: 2, Max: 2, Use: 2}

	arm := testConfig()
	arm.Arch = "arm64"

	return []goldenCase{
		{"minimal", testVM(), testConfig()},
		{"full", full, fullCfg},
		{"forwards", testVM(), forwards},
		{"sysfs fixed memory", sysfs, testConfig()},
		{"arm64", testVM(), arm},
	}
}

var updateGolden = flag.Bool("update", false, "rewrite testdata/build/*.args from Build's output")

// TestBuildGolden pins Build's whole command line, flag order included
// (QEMU numbers devices in flag order, and the guest names its NICs and
// disks by it), one argument a line.
func TestBuildGolden(t *testing.T) {
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			cmd, err := Build(c.vm, c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(append([]string{cmd.Path}, cmd.Args...), "\n") + "\n"
			file := filepath.Join("testdata", "build", strings.ReplaceAll(c.name, " ", "-")+".args")
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Build's command line differs from %s (go test -run TestBuildGolden -update rewrites it):\ngot:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}
