package guest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cmdlineIP runs files/cmdline-ip with the host's busybox on cmdline,
// with bb standing in for the guest's busybox, and returns its output.
func cmdlineIP(t *testing.T, cmdline, bb, sysnet string, wrap ...string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox")
	}
	dir := t.TempDir()
	script, err := files.ReadFile("files/cmdline-ip")
	if err != nil {
		t.Fatal(err)
	}
	sp, cp := filepath.Join(dir, "cmdline-ip"), filepath.Join(dir, "cmdline")
	if err := os.WriteFile(sp, script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, []byte(cmdline+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if bb == "" {
		bb = busybox
	}
	args := append(wrap, busybox, "sh", sp)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "BB="+bb, "CMDLINE="+cp, "SYSNET="+sysnet)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cmdline-ip: %v\n%s", err, out)
	}
	return string(out)
}

// The ip= arguments the guest applies itself, with ip stubbed to record
// its calls: static ones naming a device are applied (the runner's
// ip=<ip>:::<mask>:<pod>:eth1:off), the rest are left alone.
func TestCmdlineIPCommands(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox")
	}
	for _, c := range []struct {
		name, cmdline string
		want          []string
	}{
		{name: "the runner's extra network",
			cmdline: "panic=-1 root=/dev/vda ip=10.100.0.5:::255.255.0.0:db-abcde:eth1:off hostname=vm-db-abcde console=ttyS1",
			want:    []string{"ip link set eth1 up", "ip addr add 10.100.0.5/255.255.0.0 dev eth1"}},
		{name: "a gateway becomes a default route of lower priority",
			cmdline: "ip=10.0.0.7::10.0.0.1:255.255.255.0::eth2:none",
			want:    []string{"ip link set eth2 up", "ip addr add 10.0.0.7/255.255.255.0 dev eth2", "ip route add default via 10.0.0.1 dev eth2 metric 100"}},
		{name: "no argument", cmdline: "panic=-1 root=/dev/vda"},
		{name: "DHCP is udhcpc's", cmdline: "ip=dhcp ip=:::::eth0:dhcp"},
		{name: "no device", cmdline: "ip=10.0.0.7:::255.255.255.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "calls")
			stub := filepath.Join(dir, "bb")
			// ip is recorded; every other applet is the real busybox.
			if err := os.WriteFile(stub, []byte(fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = ip ]; then echo \"$*\" >>%s; exit 0; fi\nexec %s \"$@\"\n", log, busybox)), 0o755); err != nil {
				t.Fatal(err)
			}
			sysnet := filepath.Join(dir, "net")
			for _, d := range []string{"eth0", "eth1", "eth2"} {
				if err := os.MkdirAll(filepath.Join(sysnet, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmdlineIP(t, c.cmdline, stub, sysnet)
			raw, _ := os.ReadFile(log)
			got := strings.TrimSpace(string(raw))
			if want := strings.Join(c.want, "\n"); got != want {
				t.Errorf("ip calls\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// The runner's ip= argument applied by the real busybox to a real NIC
// named eth1, in a network namespace: the dotted netmask becomes /16.
// Needs root and iproute2.
func TestCmdlineIPConfiguresTheNIC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	ns := fmt.Sprintf("vmscale-cmdlineip%d", rand.IntN(100000))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", "eth1", "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("tap: %v %s", err, out)
	}
	out := cmdlineIP(t, "root=/dev/vda ip=10.100.0.5:::255.255.0.0:db-abcde:eth1:off hostname=vm-db-abcde", "", "/sys/class/net",
		"ip", "netns", "exec", ns)
	if !strings.Contains(out, "cmdline-ip: eth1 10.100.0.5/255.255.0.0") {
		t.Errorf("output %q", out)
	}
	addr, err := exec.Command("ip", "netns", "exec", ns, "ip", "-4", "-o", "addr", "show", "dev", "eth1").CombinedOutput()
	if err != nil || !strings.Contains(string(addr), "inet 10.100.0.5/16 ") {
		t.Errorf("eth1: %s %v", addr, err)
	}
}
