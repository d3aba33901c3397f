package netattach

import (
	"context"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Funcs are the plugin's CNI commands, for skel.PluginMainFuncs.
var Funcs = skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck}

// podNetworks looks the pod's annotation up and resolves each network to its
// node bridge; nil when the pod asks for none (or the caller is not
// Kubernetes).
func podNetworks(conf *NetConf, cniArgs string) ([]Network, map[string]string, error) {
	ns, name, ok, err := ParseK8sArgs(cniArgs)
	if err != nil || !ok {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	annotations, err := PodAnnotations(ctx, conf.Kubeconfig, ns, name)
	if err != nil {
		return nil, nil, err
	}
	value := annotations[NetworksAnnotation]
	nets, err := ParseNetworks(value, ns)
	if err != nil {
		return nil, nil, err
	}
	bridges := map[string]string{}
	for _, n := range nets {
		br, ok := conf.Networks[n.Key()]
		if !ok {
			return nil, nil, fmt.Errorf("pod %s/%s: annotation %s=%q names network %s, which this node does not provide (its vmscale-netattach config maps only %v)",
				ns, name, NetworksAnnotation, value, n.Key(), keys(conf.Networks))
		}
		bridges[n.Key()] = br
	}
	return nets, bridges, nil
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// prevResult is the chain's result so far, which this plugin returns as it
// is (the extra interfaces carry no address of the pod's); an empty result
// of the configured version when the plugin runs first.
func prevResult(conf *NetConf) (types.Result, error) {
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, err
	}
	if conf.PrevResult != nil {
		return conf.PrevResult, nil
	}
	return &current.Result{CNIVersion: current.ImplementedSpecVersion}, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	result, err := prevResult(conf)
	if err != nil {
		return err
	}
	nets, bridges, err := podNetworks(conf, args.Args)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if err := Attach(args.Netns, args.ContainerID, n.Interface, bridges[n.Key()]); err != nil {
			_ = Detach(args.ContainerID)
			return fmt.Errorf("network %s as %s: %w", n.Key(), n.Interface, err)
		}
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// cmdDel needs neither the apiserver nor the pod's namespace: the host ends
// carry the container ID in their alias.
func cmdDel(args *skel.CmdArgs) error {
	if _, err := ParseConf(args.StdinData); err != nil {
		return err
	}
	return Detach(args.ContainerID)
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := prevResult(conf); err != nil {
		return err
	}
	nets, bridges, err := podNetworks(conf, args.Args)
	if err != nil {
		return err
	}
	for _, n := range nets {
		if err := Verify(args.Netns, args.ContainerID, n.Interface, bridges[n.Key()]); err != nil {
			return fmt.Errorf("network %s: %w", n.Key(), err)
		}
	}
	return nil
}
