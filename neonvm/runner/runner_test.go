package runner

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/daemon"
)

func TestRuntimeFiles(t *testing.T) {
	ro := true
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		Command:  []string{"/bin/sh"},
		Args:     []string{"-c", "echo 'hi'"},
		Env:      []vmv1.EnvVar{{Name: "A", Value: "it's"}},
		Settings: &vmv1.GuestSettings{Sysctl: []string{"vm.swappiness=1"}},
	}, Disks: []vmv1.Disk{
		{Name: "data", MountPath: "/data", DiskSource: vmv1.DiskSource{EmptyDisk: &vmv1.EmptyDiskSource{}}},
		{Name: "conf", MountPath: "/etc/app", ReadOnly: &ro},
		{Name: "cache", MountPath: "/cache", DiskSource: vmv1.DiskSource{Tmpfs: &vmv1.TmpfsDiskSource{Size: resource.MustParse("1Mi")}}},
	}}
	f := RuntimeFiles(spec)
	checks := map[string][]string{
		"sysctl.conf": {"kernel.core_pattern=core", "kernel.core_uses_pid=1", "vm.swappiness=1"},
		"args.sh":     {`'-c' 'echo '\''hi'\'''`},
		"env.sh":      {`export A='it'\''s'`},
		"mounts.sh":   {`mount -o rw "$(/neonvm/bin/busybox findfs LABEL=data)" '/data'`, `mount -o ro "$(/neonvm/bin/busybox findfs LABEL=conf)" '/etc/app'`, "mount -t tmpfs -o size=1048576 tmpfs '/cache'"},
	}
	for file, wants := range checks {
		for _, w := range wants {
			if !strings.Contains(f[file], w) {
				t.Errorf("%s lacks %q:\n%s", file, w, f[file])
			}
		}
	}
}

func TestCheckHost(t *testing.T) {
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		CPUs: vmv1.CPUs{Min: 1000, Max: 2000, Use: 1000}, MemorySlotSize: resource.MustParse("1Gi"),
		MemorySlots: vmv1.MemorySlots{Min: 1, Max: 8, Use: 1}, RootDisk: vmv1.RootDisk{Image: "x"},
	}}
	if err := CheckHost(spec, 16<<30); err != nil {
		t.Fatalf("8Gi on a 16Gi host: %v", err)
	}
	if err := CheckHost(spec, 4<<30); err == nil || !strings.Contains(err.Error(), "spec.guest.memorySlots.max: 8 slots of 1Gi (8Gi) exceed this host's memory (4Gi)") {
		t.Fatalf("8Gi on a 4Gi host: %v", err)
	}
}

func TestSysfsCurrent(t *testing.T) {
	for _, c := range []struct{ online, last, want vmv1.MilliCPU }{
		{1000, 250, 250},   // a quarter CPU: one online
		{2000, 1500, 1500}, // 1.5: two online
		{1000, 1000, 1000},
		{2000, 1000, 2000}, // the guest has more than was set
		{1000, 1500, 1000}, // fewer
		{3000, 0, 3000},    // nothing set yet
	} {
		if got := SysfsCurrent(c.online, c.last); got != c.want {
			t.Errorf("SysfsCurrent(%v, %v) = %v; want %v", c.online, c.last, got, c.want)
		}
	}
}

// In Sysfs mode the runner API goes through neonvm-daemon: the real
// daemon handler over a folder laid out like /sys.
func TestAPISysfsThroughDaemon(t *testing.T) {
	sys := t.TempDir()
	cpuDir := filepath.Join(sys, "devices/system/cpu")
	for i := 0; i < 4; i++ {
		os.MkdirAll(filepath.Join(cpuDir, fmt.Sprintf("cpu%d", i)), 0o755)
	}
	os.WriteFile(filepath.Join(cpuDir, "present"), []byte("0-3\n"), 0o644)
	os.WriteFile(filepath.Join(cpuDir, "online"), []byte("0\n"), 0o644)
	// The fake kernel: writes to cpuN/online update the online list.
	d := &daemon.CPUServer{Sys: sys}
	daemonSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.ServeHTTP(w, r)
		var on []string
		for i := 0; i < 4; i++ {
			b, _ := os.ReadFile(filepath.Join(cpuDir, fmt.Sprintf("cpu%d", i), "online"))
			if i == 0 || strings.TrimSpace(string(b)) == "1" {
				on = append(on, fmt.Sprint(i))
			}
		}
		os.WriteFile(filepath.Join(cpuDir, "online"), []byte(strings.Join(on, ",")), 0o644)
	}))
	defer daemonSrv.Close()

	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 1000, Max: 4000, Use: 1000}}}
	api := httptest.NewServer(NewAPI(spec, vmv1.CPUScalingModeSysfs, nil, strings.TrimPrefix(daemonSrv.URL, "http://")).Handler())
	defer api.Close()
	post := func(body string) int {
		resp, err := http.Post(api.URL+"/cpu_change", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	current := func() string {
		resp, err := http.Get(api.URL + "/cpu_current")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	if code := post(`{"VCPUs":"2500m"}`); code != 200 {
		t.Fatalf("/cpu_change 2500m = %d", code)
	}
	// The guest onlines whole CPUs; the fractional amount set is current
	// while it has them.
	if b, _ := os.ReadFile(filepath.Join(cpuDir, "online")); strings.TrimSpace(string(b)) != "0,1,2" {
		t.Fatalf("online CPUs %q after 2500m; want 0,1,2", b)
	}
	if got := current(); got != `{"VCPUs":"2500m"}` {
		t.Fatalf("/cpu_current = %s; want 2500m (3 online)", got)
	}
	// A guest that has other CPUs online than asked (rebooted, or changed
	// behind the runner's back) is reported as it is.
	os.WriteFile(filepath.Join(cpuDir, "online"), []byte("0,1\n"), 0o644)
	if got := current(); got != `{"VCPUs":2}` {
		t.Fatalf("/cpu_current = %s with 2 online; want 2", got)
	}
	if code := post(`{"VCPUs":1}`); code != 200 || current() != `{"VCPUs":1}` {
		t.Fatalf("back to 1: %d %s", code, current())
	}
	daemonSrv.Close()
	if code := post(`{"VCPUs":2}`); code != http.StatusBadGateway {
		t.Fatalf("/cpu_change with the daemon down = %d; want 502", code)
	}
}

func TestAPI(t *testing.T) {
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 250, Max: 2000, Use: 250}}}
	srv := httptest.NewServer(NewAPI(spec, vmv1.CPUScalingModeQMP, nil, "").Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/cpu_change")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /cpu_change = %d; want 405", resp.StatusCode)
	}
}

func TestPodNetworkCommands(t *testing.T) {
	n := DefaultPodNetwork([]int{5432, 9100})
	if fmt.Sprint(n.Ports) != "[5432 9100 10301]" {
		t.Fatalf("ports %v", n.Ports)
	}
	var all []string
	for _, c := range n.Commands() {
		all = append(all, strings.Join(c, " "))
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{
		"ip addr add 169.254.254.253/30 dev br-def",
		"ip link set tap-def master br-def",
		"iptables -t nat -A POSTROUTING -s 169.254.254.254/32 ! -d 169.254.254.252/30 -j MASQUERADE",
		"iptables -t nat -A PREROUTING -i eth0 -p tcp --dport 5432 -j DNAT --to-destination 169.254.254.254:5432",
		"iptables -t nat -A PREROUTING -i eth0 -p tcp --dport 10301 -j DNAT --to-destination 169.254.254.254:10301",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("missing %q in\n%s", want, joined)
		}
	}
	if !strings.Contains(strings.Join(n.DHCPCommand(), " "), "--dhcp-range=169.254.254.254,169.254.254.254,255.255.255.252,infinite") {
		t.Errorf("dhcp %v", n.DHCPCommand())
	}
}

// A migration target starts with the source's hot-plugged vCPUs and
// virtio-mem size, read from the status the pod was made with.
func TestMigrationTargetDevices(t *testing.T) {
	vm := &vmv1.VirtualMachine{Spec: vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		CPUs:           vmv1.CPUs{Min: 1000, Max: 4000, Use: 3000},
		MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 8, Use: 5},
	}}}
	cpus := vmv1.MilliCPU(2500)
	cores, mem := MigrationTargetDevices(vm, vmv1.VirtualMachineStatus{CPUs: &cpus, MemorySize: resource.NewQuantity(5*256<<20, resource.BinarySI)})
	if len(cores) != 2 || cores[0] != 1 || cores[1] != 2 {
		t.Errorf("cores %v, want [1 2] (boot core 0, 2500m needs 3)", cores)
	}
	if mem != 3*256<<20 {
		t.Errorf("virtio-mem %d, want 768Mi", mem)
	}
	sysfs := vmv1.CPUScalingModeSysfs
	vm.Spec.CPUScalingMode = &sysfs
	if cores, _ := MigrationTargetDevices(vm, vmv1.VirtualMachineStatus{CPUs: &cpus}); len(cores) != 0 {
		t.Errorf("SysfsScaling boots every vCPU; cores %v", cores)
	}
	if cores, mem := MigrationTargetDevices(vm, vmv1.VirtualMachineStatus{}); cores != nil || mem != 0 {
		t.Errorf("no status: %v %d", cores, mem)
	}
}

// /ready answers within the kubelet's probe timeout even when the guest's
// daemon does not (a guest still booting): 503, saying why.
func TestReadyBoundedWhileGuestBoots(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	daemonSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer daemonSrv.Close()
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 1000, Max: 4000, Use: 1000}}}
	api := httptest.NewServer(NewAPI(spec, vmv1.CPUScalingModeSysfs, nil, strings.TrimPrefix(daemonSrv.URL, "http://")).Handler())
	defer api.Close()

	start := time.Now()
	resp, err := (&http.Client{Timeout: time.Second}).Get(api.URL + "/ready")
	if err != nil {
		t.Fatalf("GET /ready within the kubelet's 1 s: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "still booting") {
		t.Fatalf("GET /ready = %d %q, want 503 saying the guest is still booting", resp.StatusCode, body)
	}
	if took := time.Since(start); took < ReadyTimeout {
		t.Fatalf("answered in %v, before its own bound %v", took, ReadyTimeout)
	}
}
