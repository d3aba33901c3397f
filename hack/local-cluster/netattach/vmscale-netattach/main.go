// Command vmscale-netattach is a chained CNI plugin for vmscale's local
// cluster that stands in for Multus: it gives a pod the extra interfaces its
// k8s.v1.cni.cncf.io/networks annotation names (see hack/local-cluster/netattach). The
// container runtime runs it; hack/local-cluster/cluster.sh installs it.
//
// vmscale:no-image
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/vmscale/vmscale/hack/local-cluster/netattach"
)

func main() {
	skel.PluginMainFuncs(netattach.Funcs, netattach.SupportedVersions, "vmscale-netattach: extra pod networks for vmscale's local cluster")
}
