package runner

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

// PodNetwork is the guest's network inside a runner pod (docs/neonvm.md#network-and-ippool):
// a bridge and tap on a /30 link-local net (runner .253, guest .254), the
// guest's address by DHCP, its ports DNATed from the pod interface (so
// clients reach the guest on the pod IP, keeping their own address), and
// its outbound traffic masqueraded behind the pod IP.
type PodNetwork struct {
	PodInterface string // eth0
	Bridge       string // br-def
	Tap          string // tap-def
	// Ports are the guest TCP ports reachable on the pod IP.
	Ports []int
}

// Addresses of the pod network's /30.
const (
	PodNetBridgeIP = "169.254.254.253"
	// PodNetBridgeMAC is the bridge's address in every runner pod (locally
	// administered).
	PodNetBridgeMAC = "02:00:a9:fe:fe:fd"
	PodNetGuestIP   = "169.254.254.254"
	PodNetCIDR      = "169.254.254.252/30"
	PodNetMask      = "255.255.255.252"
	// DaemonPort is neonvm-daemon's port in the guest.
	DaemonPort = 25183
)

// DefaultPodNetwork is the network for a guest exposing ports: the spec's,
// plus the metrics exporter (9100) and the vm-monitor (10301).
func DefaultPodNetwork(guestPorts []int) PodNetwork {
	set := map[int]bool{9100: true, 10301: true}
	for _, p := range guestPorts {
		set[p] = true
	}
	ports := make([]int, 0, len(set))
	for p := range set {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	return PodNetwork{PodInterface: "eth0", Bridge: "br-def", Tap: "tap-def", Ports: ports}
}

// Commands are the ip and iptables commands that set the network up, in
// order (Setup turns on IPv4 forwarding first).
func (n PodNetwork) Commands() [][]string {
	cmds := [][]string{
		// A fixed MAC: the guest's ARP entry for its gateway stays right
		// when the VM migrates to another pod's bridge.
		{"ip", "link", "add", n.Bridge, "address", PodNetBridgeMAC, "type", "bridge"},
		{"ip", "addr", "add", PodNetBridgeIP + "/30", "dev", n.Bridge},
		{"ip", "link", "set", n.Bridge, "up"},
		{"ip", "tuntap", "add", "dev", n.Tap, "mode", "tap"},
		{"ip", "link", "set", n.Tap, "master", n.Bridge},
		{"ip", "link", "set", n.Tap, "up"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", PodNetGuestIP + "/32", "!", "-d", PodNetCIDR, "-j", "MASQUERADE"},
	}
	for _, p := range n.Ports {
		cmds = append(cmds, []string{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", n.PodInterface, "-p", "tcp",
			"--dport", strconv.Itoa(p), "-j", "DNAT", "--to-destination", PodNetGuestIP + ":" + strconv.Itoa(p)})
	}
	return cmds
}

// DHCPCommand is dnsmasq serving the guest its one address (no DNS).
func (n PodNetwork) DHCPCommand() []string {
	return []string{"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=0",
		"--interface=" + n.Bridge, "--bind-interfaces", "--except-interface=lo",
		"--dhcp-range=" + PodNetGuestIP + "," + PodNetGuestIP + "," + PodNetMask + ",infinite",
		"--dhcp-option=option:router," + PodNetBridgeIP, "--dhcp-authoritative", "--log-dhcp",
		"--pid-file=", "--dhcp-leasefile=/dev/null"}
}

// Setup turns on IPv4 forwarding in the pod's network namespace (written
// to /proc directly: the runner image has no sysctl), then runs Commands,
// stopping at the first failure.
func (n PodNetwork) Setup(ctx context.Context) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("pod network: net.ipv4.ip_forward=1 (needs a privileged runner or the pod sysctl): %w", err)
	}
	for _, c := range n.Commands() {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("pod network: %s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// OverlayNetwork is the guest's extra network in a runner pod
// (docs/neonvm.md#network-and-ippool): the pod's Multus interface (net1) and a tap for the
// guest's second NIC, both ports of one bridge, so the guest sits on the
// overlay's L2 segment itself with the address the controller allocated.
// The pod keeps no address on the overlay: the address is the guest's.
type OverlayNetwork struct {
	PodInterface string // net1, spec.extraNetwork.interface
	Bridge       string // br-overlay
	Tap          string // tap-overlay
	// MTU is the pod interface's, given to the tap (and by QEMU to the
	// guest) so frames fit the overlay (VXLAN takes 50 bytes); 0: unknown.
	MTU int
}

// DefaultOverlayNetwork is the overlay of podInterface (net1 when empty).
func DefaultOverlayNetwork(podInterface string) OverlayNetwork {
	if podInterface == "" {
		podInterface = "net1"
	}
	return OverlayNetwork{PodInterface: podInterface, Bridge: "br-overlay", Tap: "tap-overlay"}
}

// Commands are the ip commands that set the overlay up, in order.
func (n OverlayNetwork) Commands() [][]string {
	cmds := [][]string{
		{"ip", "addr", "flush", "dev", n.PodInterface},
		{"ip", "link", "add", n.Bridge, "type", "bridge"},
		{"ip", "link", "set", n.PodInterface, "master", n.Bridge},
		{"ip", "tuntap", "add", "dev", n.Tap, "mode", "tap"},
	}
	if n.MTU > 0 {
		cmds = append(cmds, []string{"ip", "link", "set", n.Tap, "mtu", strconv.Itoa(n.MTU)})
	}
	return append(cmds,
		[]string{"ip", "link", "set", n.Tap, "master", n.Bridge},
		[]string{"ip", "link", "set", n.PodInterface, "up"},
		[]string{"ip", "link", "set", n.Tap, "up"},
		[]string{"ip", "link", "set", n.Bridge, "up"},
	)
}

// Setup reads the pod interface's MTU, then runs Commands, stopping at
// the first failure; it returns the network with its MTU.
func (n OverlayNetwork) Setup(ctx context.Context) (OverlayNetwork, error) {
	raw, err := os.ReadFile("/sys/class/net/" + n.PodInterface + "/mtu")
	if err != nil {
		return n, fmt.Errorf("extra network: the pod has no interface %s (is Multus attaching the NetworkAttachmentDefinition?): %w", n.PodInterface, err)
	}
	if n.MTU, err = strconv.Atoi(strings.TrimSpace(string(raw))); err != nil {
		return n, fmt.Errorf("extra network: MTU of %s: %w", n.PodInterface, err)
	}
	for _, c := range n.Commands() {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return n, fmt.Errorf("extra network: %s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return n, nil
}

// OverlayMAC is the guest's MAC on the overlay, derived from its address
// (02:00 and the four address bytes, locally administered): unique on the
// overlay's one L2 segment while addresses are, and the same on a
// migration's target as on its source.
func OverlayMAC(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
