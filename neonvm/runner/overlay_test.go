package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qemu"
)

func TestOverlayNetworkCommands(t *testing.T) {
	n := DefaultOverlayNetwork("")
	n.MTU = 1450
	var got []string
	for _, c := range n.Commands() {
		got = append(got, strings.Join(c, " "))
	}
	want := []string{
		"ip addr flush dev net1",
		"ip link add br-overlay type bridge",
		"ip link set net1 master br-overlay",
		"ip tuntap add dev tap-overlay mode tap",
		"ip link set tap-overlay mtu 1450",
		"ip link set tap-overlay master br-overlay",
		"ip link set net1 up",
		"ip link set tap-overlay up",
		"ip link set br-overlay up",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("commands\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	n = DefaultOverlayNetwork("ovl0")
	for _, c := range n.Commands() {
		if c[len(c)-2] == "mtu" {
			t.Errorf("MTU set without one known: %v", c)
		}
	}
	if n.Commands()[0][4] != "ovl0" {
		t.Errorf("interface %v", n.Commands()[0])
	}
}

func TestExtraNICFromStatus(t *testing.T) {
	for _, c := range []struct {
		ip, mask string
		want     *qemu.ExtraNIC
		err      string
	}{
		{ip: "", want: nil},
		{ip: "10.100.0.5", mask: "255.255.0.0",
			want: &qemu.ExtraNIC{MAC: "02:00:0a:64:00:05", IP: "10.100.0.5", Mask: "255.255.0.0", Hostname: "db-abcde"}},
		{ip: "10.100.255.254", mask: "255.255.0.0",
			want: &qemu.ExtraNIC{MAC: "02:00:0a:64:ff:fe", IP: "10.100.255.254", Mask: "255.255.0.0", Hostname: "db-abcde"}},
		{ip: "fd00::5", mask: "255.255.0.0", err: `status.extraNetIP "fd00::5" is not an IPv4 address`},
		{ip: "10.100.0.5", mask: "255.0.255.0", err: `status.extraNetMask: netmask "255.0.255.0": not a contiguous IPv4 netmask`},
	} {
		got, err := ExtraNIC(vmv1.VirtualMachineStatus{ExtraNetIP: c.ip, ExtraNetMask: c.mask}, "db-abcde")
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%s/%s: error %v, want %s", c.ip, c.mask, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s/%s: %+v %v, want %+v", c.ip, c.mask, got, err, c.want)
		}
	}
}

// Distinct addresses give distinct MACs: the overlay is one L2 segment.
func TestOverlayMACIsUniquePerAddress(t *testing.T) {
	seen := map[string]netip.Addr{}
	for i := 0; i < 1<<16; i++ {
		a := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
		m := OverlayMAC(a)
		if prev, ok := seen[m]; ok {
			t.Fatalf("%s and %s share MAC %s", prev, a, m)
		}
		seen[m] = a
	}
}

// The overlay set up for real, in a network namespace standing in for the
// runner pod with a veth as its Multus interface: both the pod interface
// and the tap are ports of the bridge, the tap has the pod interface's MTU,
// everything is up and the pod interface's own address is gone. Needs root
// and iproute2; skipped otherwise.
func TestOverlayNetworkSetupInNamespace(t *testing.T) {
	if os.Getenv("VMSCALE_OVERLAY_CHILD") != "" {
		if _, err := DefaultOverlayNetwork("net1").Setup(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	ns := fmt.Sprintf("vmscale-overlay%d", rand.IntN(100000))
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	in := func(args ...string) string { return run(append([]string{"ip", "netns", "exec", ns}, args...)...) }
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	in("ip", "link", "add", "net1", "mtu", "1450", "type", "veth", "peer", "name", "vxlan-side")
	in("ip", "addr", "add", "10.100.200.9/16", "dev", "net1")

	child := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestOverlayNetworkSetupInNamespace$")
	child.Env = append(os.Environ(), "VMSCALE_OVERLAY_CHILD=1")
	if out, err := child.CombinedOutput(); err != nil {
		t.Fatalf("Setup in the namespace: %v\n%s", err, out)
	}

	var links []struct {
		Name     string   `json:"ifname"`
		Master   string   `json:"master"`
		MTU      int      `json:"mtu"`
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Family string `json:"family"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(in("ip", "-j", "addr", "show")), &links); err != nil {
		t.Fatal(err)
	}
	byName := map[string]int{}
	for i, l := range links {
		byName[l.Name] = i
	}
	for name, master := range map[string]string{"net1": "br-overlay", "tap-overlay": "br-overlay", "br-overlay": ""} {
		i, ok := byName[name]
		if !ok {
			t.Errorf("no %s", name)
			continue
		}
		l := links[i]
		if l.Master != master {
			t.Errorf("%s: master %q, want %q", name, l.Master, master)
		}
		if !strings.Contains(strings.Join(l.Flags, ","), "UP") {
			t.Errorf("%s is not up: %v", name, l.Flags)
		}
	}
	if l := links[byName["tap-overlay"]]; l.MTU != 1450 {
		t.Errorf("tap-overlay MTU %d, want the pod interface's 1450", l.MTU)
	}
	for _, a := range links[byName["net1"]].AddrInfo {
		if a.Family == "inet" {
			t.Errorf("net1 kept an IPv4 address: the address is the guest's")
		}
	}
}
