package netattach

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/clientcmd"
)

// NetConf is the plugin's entry in a conflist:
//
//	{"type": "vmscale-netattach",
//	 "kubeconfig": "/path/to/kubelet.kubeconfig",
//	 "networks": {"neonvm-system/neonvm-overlay-net": "neon-br0"}}
//
// Networks maps each NetworkAttachmentDefinition a pod may name to the node
// bridge its interface joins: the plugin never reads the definitions
// themselves.
type NetConf struct {
	types.PluginConf
	Kubeconfig string            `json:"kubeconfig"`
	Networks   map[string]string `json:"networks"`
}

// ParseConf decodes stdin's configuration and its previous result.
func ParseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.Kubeconfig == "" {
		return nil, fmt.Errorf("network configuration: kubeconfig is required")
	}
	return conf, nil
}

// K8sArgs are the CNI_ARGS the kubelet's runtime passes for a pod.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// ParseK8sArgs reads the pod's namespace and name from CNI_ARGS; ok is false
// when the caller is not Kubernetes (no pod to look up).
func ParseK8sArgs(cniArgs string) (ns, name string, ok bool, err error) {
	args := K8sArgs{}
	if err := types.LoadArgs(cniArgs, &args); err != nil {
		return "", "", false, fmt.Errorf("parse CNI_ARGS: %w", err)
	}
	ns, name = string(args.K8S_POD_NAMESPACE), string(args.K8S_POD_NAME)
	return ns, name, ns != "" && name != "", nil
}

// PodAnnotations reads the pod's annotations from the apiserver the
// kubeconfig names (as metadata only: the node's own credentials may read
// the pods bound to it).
func PodAnnotations(ctx context.Context, kubeconfig, ns, name string) (map[string]string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.Timeout = 15 * time.Second
	cfg.UserAgent = "vmscale-netattach"
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	pod, err := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"}).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
	}
	return pod.Annotations, nil
}
