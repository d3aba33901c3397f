// Package netattach is a small chained CNI plugin that stands in for Multus on
// vmscale's local cluster (hack/local-cluster): it gives a pod the extra
// interfaces its `k8s.v1.cni.cncf.io/networks` annotation asks for, each a
// veth whose host end is a port of a node bridge (neon-br0, joined to the
// other node by VXLAN), with no address (the VM guest behind the interface
// owns the address; the controller does IPAM).
//
// It runs after bridge and portmap in the node's conflist and passes their
// result through unchanged, so the pod's eth0 and IP stay the primary
// network's. A real cluster uses Multus and a NetworkAttachmentDefinition
// instead (deploy/multus).
package netattach

import (
	"encoding/json"
	"fmt"
	"strings"
)

// NetworksAnnotation is Multus' pod annotation naming the extra networks.
const NetworksAnnotation = "k8s.v1.cni.cncf.io/networks"

// Network is one attachment the annotation asks for.
type Network struct {
	Namespace string // of the NetworkAttachmentDefinition; the pod's when the annotation omits it
	Name      string
	Interface string // in the pod; Multus' default net<N> (1-based position) when omitted
}

// Key is the network's "<namespace>/<name>", as NetConf.Networks maps it.
func (n Network) Key() string { return n.Namespace + "/" + n.Name }

// ParseNetworks reads the annotation's value in either of Multus' forms: the
// short form, a comma-separated list of `[<namespace>/]<name>[@<interface>]`,
// or a JSON list of objects with `name`, `namespace` and `interface` (other
// keys, such as `ips` or `mac`, are ignored: the guest owns its addresses).
// podNamespace fills in an omitted namespace. An empty value is no networks.
func ParseNetworks(value, podNamespace string) ([]Network, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil
	}
	var nets []Network
	if strings.HasPrefix(value, "[") {
		var elems []struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
			Interface string `json:"interface"`
		}
		if err := json.Unmarshal([]byte(value), &elems); err != nil {
			return nil, fmt.Errorf("annotation %s=%q: not a JSON list of networks: %w", NetworksAnnotation, value, err)
		}
		for _, e := range elems {
			nets = append(nets, Network{Namespace: e.Namespace, Name: e.Name, Interface: e.Interface})
		}
	} else {
		for _, item := range strings.Split(value, ",") {
			item = strings.TrimSpace(item)
			var n Network
			if i := strings.LastIndex(item, "@"); i >= 0 {
				item, n.Interface = item[:i], item[i+1:]
				if n.Interface == "" {
					return nil, fmt.Errorf("annotation %s=%q: empty interface name in %q", NetworksAnnotation, value, item+"@")
				}
			}
			if i := strings.Index(item, "/"); i >= 0 {
				n.Namespace, n.Name = item[:i], item[i+1:]
			} else {
				n.Name = item
			}
			nets = append(nets, n)
		}
	}
	seen := map[string]bool{}
	for i := range nets {
		n := &nets[i]
		if n.Namespace == "" {
			n.Namespace = podNamespace
		}
		if n.Interface == "" {
			n.Interface = fmt.Sprintf("net%d", i+1)
		}
		if n.Name == "" || strings.Contains(n.Name, "/") {
			return nil, fmt.Errorf("annotation %s=%q: network %d has no valid name", NetworksAnnotation, value, i+1)
		}
		if len(n.Interface) > 15 || strings.ContainsAny(n.Interface, "/ \t") || n.Interface == "." || n.Interface == ".." {
			return nil, fmt.Errorf("annotation %s=%q: %q is not a valid interface name", NetworksAnnotation, value, n.Interface)
		}
		if n.Interface == "eth0" || seen[n.Interface] {
			return nil, fmt.Errorf("annotation %s=%q: interface %s is used twice (eth0 is the primary network's)", NetworksAnnotation, value, n.Interface)
		}
		seen[n.Interface] = true
	}
	return nets, nil
}
