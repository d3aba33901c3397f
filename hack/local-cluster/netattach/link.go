package netattach

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// aliasPrefix marks the host ends this plugin made; the rest of the alias
// is "<containerID>/<interface>", so DEL finds them with no apiserver and no
// pod network namespace.
const aliasPrefix = "vmscale-netattach/"

// HostInterface is the host end's name for a container's interface: short
// enough for IFNAMSIZ, the same on every call.
func HostInterface(containerID, iface string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + iface))
	return "na" + hex.EncodeToString(sum[:])[:11]
}

func alias(containerID, iface string) string { return aliasPrefix + containerID + "/" + iface }

// Attach makes a veth pair: iface in the pod's network namespace (up, no
// address, the bridge's MTU) and its host end a port of bridge in the
// current namespace. A half-made pair from an earlier try is replaced.
func Attach(podNetns, containerID, iface, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("node bridge %s (made by the node's setup, e.g. cluster.sh up): %w", bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("node link %s is a %s, not a bridge", bridge, br.Type())
	}
	pod, err := netns.GetFromPath(podNetns)
	if err != nil {
		return fmt.Errorf("open pod network namespace %s: %w", podNetns, err)
	}
	defer pod.Close()
	podLinks, err := netlink.NewHandleAt(pod)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", podNetns, err)
	}
	defer podLinks.Close()

	host := HostInterface(containerID, iface)
	if old, err := netlink.LinkByName(host); err == nil {
		if err := netlink.LinkDel(old); err != nil {
			return fmt.Errorf("remove the earlier host end %s: %w", host, err)
		}
	}
	if old, err := podLinks.LinkByName(iface); err == nil {
		return fmt.Errorf("pod already has an interface %s (%s)", iface, old.Type())
	}
	mtu := br.Attrs().MTU
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, MTU: mtu},
		PeerName:      iface,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(int(pod)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s <-> %s in %s: %w", host, iface, podNetns, err)
	}
	undo := func(err error) error {
		if l, e := netlink.LinkByName(host); e == nil {
			_ = netlink.LinkDel(l)
		}
		return err
	}
	hostLink, err := netlink.LinkByName(host)
	if err != nil {
		return undo(fmt.Errorf("find %s: %w", host, err))
	}
	if err := netlink.LinkSetAlias(hostLink, alias(containerID, iface)); err != nil {
		return undo(fmt.Errorf("set alias of %s: %w", host, err))
	}
	if err := netlink.LinkSetMaster(hostLink, br); err != nil {
		return undo(fmt.Errorf("attach %s to %s: %w", host, bridge, err))
	}
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return undo(fmt.Errorf("set %s up: %w", host, err))
	}
	podLink, err := podLinks.LinkByName(iface)
	if err != nil {
		return undo(fmt.Errorf("find %s in %s: %w", iface, podNetns, err))
	}
	if err := podLinks.LinkSetUp(podLink); err != nil {
		return undo(fmt.Errorf("set %s up in %s: %w", iface, podNetns, err))
	}
	return nil
}

// Detach removes every host end made for the container (which takes the pod
// ends with them). Nothing to remove is not an error: DEL may come twice, or
// after the pod's namespace is gone (which already removed the pairs).
func Detach(containerID string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if !strings.HasPrefix(l.Attrs().Alias, aliasPrefix+containerID+"/") {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			if _, gone := netlink.LinkByIndex(l.Attrs().Index); gone != nil {
				continue // went with its peer meanwhile
			}
			errs = append(errs, fmt.Errorf("remove %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// Verify checks what Attach made: the host end up on bridge, and iface in
// the pod's namespace, up.
func Verify(podNetns, containerID, iface, bridge string) error {
	host := HostInterface(containerID, iface)
	l, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("host end %s of %s: %w", host, iface, err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("node bridge %s: %w", bridge, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host end %s is not a port of %s", host, bridge)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host end %s is down", host)
	}
	pod, err := netns.GetFromPath(podNetns)
	if err != nil {
		return fmt.Errorf("open pod network namespace %s: %w", podNetns, err)
	}
	defer pod.Close()
	h, err := netlink.NewHandleAt(pod)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", podNetns, err)
	}
	defer h.Close()
	p, err := h.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", iface, err)
	}
	if p.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("pod interface %s is down", iface)
	}
	return nil
}
