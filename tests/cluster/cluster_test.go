package cluster

import (
	"encoding/base64"
	"fmt"
	testpoll "github.com/vmscale/vmscale/tests/poll"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscale/vmscale/neonvm/controllers/webhookcert"
)

// The tests share one cluster; the first brings it up from whatever state it
// is in (nothing, stopped, or running).
var kubeconfig string

func kc(t testing.TB) string {
	t.Helper()
	if kubeconfig == "" {
		kubeconfig = Kubeconfig(t)
	}
	return kubeconfig
}

// poll retries cond until it returns nil or the deadline passes.
func poll(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	testpoll.Until(t, timeout, 500*time.Millisecond, what, cond)
}

func TestUpIsIdempotentAndDownUpWorks(t *testing.T) {
	kc(t)
	start := time.Now()
	Run(t, "up")
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("a second up took %s; want a quick no-op", d)
	}
	Run(t, "down")
	if _, err := TryKubectl(kubeconfig, "get", "nodes", "--request-timeout=3s"); err == nil {
		t.Fatal("the apiserver still answers after down")
	}
	kubeconfig = Kubeconfig(t)
	assertNodesReady(t)
}

func TestNodesReady(t *testing.T) {
	kc(t)
	assertNodesReady(t)
}

func assertNodesReady(t *testing.T) {
	t.Helper()
	for i, n := range Nodes {
		poll(t, 2*time.Minute, n+" Ready", func() error {
			out, err := TryKubectl(kubeconfig, "get", "node", n, "-o",
				`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.addresses[?(@.type=="InternalIP")].address}`)
			if err != nil {
				return err
			}
			want := fmt.Sprintf("True 10.250.0.%d", i+2)
			if strings.TrimSpace(out) != want {
				return fmt.Errorf("%s: %q, want %q", n, out, want)
			}
			return nil
		})
	}
}

// namespace makes a fresh namespace for one test and waits for its default
// service account (pods need it).
func namespace(t testing.TB, name string) string {
	t.Helper()
	deleteNamespace(name, true)
	Kubectl(t, kubeconfig, "create", "namespace", name)
	t.Cleanup(func() { deleteNamespace(name, false) })
	poll(t, time.Minute, "default service account", func() error {
		_, err := TryKubectl(kubeconfig, "-n", name, "get", "serviceaccount", "default")
		return err
	})
	return name
}

// deleteNamespace deletes a test namespace, first releasing its VMs and
// migrations from their finalizers: the test's controller may be gone, and
// the namespace would never finish deleting.
func deleteNamespace(name string, wait bool) {
	_, _ = TryKubectl(kubeconfig, "delete", "namespace", name, "--wait=false")
	if out, err := TryKubectl(kubeconfig, "-n", name, "get", "neonvm,neonvmm", "-o", "name"); err == nil {
		for _, obj := range strings.Fields(out) {
			_, _ = TryKubectl(kubeconfig, "-n", name, "patch", obj, "--type=merge", "-p", `{"metadata":{"finalizers":null}}`)
		}
	}
	if wait {
		_, _ = TryKubectl(kubeconfig, "wait", "--for=delete", "namespace/"+name, "--timeout=120s")
	}
}

func apply(t testing.TB, ns, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	Kubectl(t, kubeconfig, "-n", ns, "apply", "-f", f)
}

func netcheckPod(name, node, image, args string, extra string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: %s}
spec:
  nodeName: %s
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: netcheck
    image: %s
    imagePullPolicy: Never
    args: [%s]
%s`, name, name, node, image, args, extra)
}

func waitReady(t *testing.T, ns, pod string) {
	t.Helper()
	poll(t, 2*time.Minute, "pod "+pod+" ready", func() error {
		out, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", pod, "-o",
			`jsonpath={.status.phase} {.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "Running True" {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
}

func podExec(t *testing.T, ns, pod string, args ...string) (string, error) {
	t.Helper()
	return TryKubectl(kubeconfig, append([]string{"-n", ns, "exec", pod, "--", "/netcheck"}, args...)...)
}

// A pod on each node reaches the other by pod IP and by Service name, and
// the apiserver through the kubernetes Service with its token.
func TestPodNetwork(t *testing.T) {
	kc(t)
	ns := namespace(t, "netcheck")
	image := Image(t, "netcheck")
	probe := `    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
`
	for _, n := range Nodes {
		apply(t, ns, netcheckPod("pod-"+n, n, image, `"serve", ":8080"`, probe))
		apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: svc-%s}
spec:
  selector: {app: pod-%s}
  ports: [{port: 80, targetPort: 8080}]
`, n, n))
	}
	ips := map[string]string{}
	for _, n := range Nodes {
		waitReady(t, ns, "pod-"+n)
		ips[n] = strings.TrimSpace(Kubectl(t, kubeconfig, "-n", ns, "get", "pod", "pod-"+n, "-o", "jsonpath={.status.podIP}"))
	}
	if !strings.HasPrefix(ips["node-a"], "10.244.1.") || !strings.HasPrefix(ips["node-b"], "10.244.2.") {
		t.Fatalf("pod IPs %v are not from the nodes' pod CIDRs", ips)
	}
	// Every pair, a pod to itself included: a Service whose endpoint is on
	// the client's own node (or is the client) takes another path through
	// the host than one across nodes.
	for _, from := range Nodes {
		for _, to := range Nodes {
			for _, url := range []string{
				"http://" + ips[to] + ":8080/",
				fmt.Sprintf("http://svc-%s.%s.svc.cluster.local/", to, ns),
				fmt.Sprintf("http://svc-%s/", to),
			} {
				poll(t, time.Minute, from+" -> "+url, func() error {
					out, err := podExec(t, ns, "pod-"+from, "get", url)
					if err != nil {
						return err
					}
					if !strings.Contains(out, "netcheck pod-"+to) {
						return fmt.Errorf("answer %q is not from pod-%s", out, to)
					}
					return nil
				})
			}
		}
		poll(t, time.Minute, from+" -> apiserver", func() error {
			out, err := podExec(t, ns, "pod-"+from, "get", "https://kubernetes.default.svc/api",
				"/var/run/secrets/kubernetes.io/serviceaccount/token",
				"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
			if err != nil {
				return err
			}
			if !strings.Contains(out, `"versions"`) {
				return fmt.Errorf("unexpected answer %q", out)
			}
			return nil
		})
	}
}

// The apiserver (a host process) calls a validating webhook served by a pod
// behind a Service, which rejects a create.
func TestWebhookServedByPod(t *testing.T) {
	kc(t)
	ns := namespace(t, "webhook")
	b, err := webhookcert.Generate(webhookcert.ServiceHosts(ns, "netcheck-webhook"), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: webhook-tls}
type: kubernetes.io/tls
data:
  tls.crt: %s
  tls.key: %s
`, base64.StdEncoding.EncodeToString(b.CertPEM), base64.StdEncoding.EncodeToString(b.KeyPEM)))
	apply(t, ns, netcheckPod("webhook", "node-b", Image(t, "netcheck"),
		`"webhook", ":8443", "/tls/tls.crt", "/tls/tls.key"`, `    volumeMounts: [{name: tls, mountPath: /tls}]
  volumes: [{name: tls, secret: {secretName: webhook-tls}}]
`))
	apply(t, ns, `apiVersion: v1
kind: Service
metadata: {name: netcheck-webhook}
spec:
  selector: {app: webhook}
  ports: [{port: 443, targetPort: 8443}]
`)
	waitReady(t, ns, "webhook")
	cfgName := "netcheck-" + ns
	apply(t, ns, fmt.Sprintf(`apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: %s}
webhooks:
- name: deny.netcheck.test
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 5
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: %s}
  rules:
  - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}
  clientConfig:
    caBundle: %s
    service: {namespace: %s, name: netcheck-webhook, path: /validate}
`, cfgName, ns, base64.StdEncoding.EncodeToString(b.CAPEM), ns))
	t.Cleanup(func() { _, _ = TryKubectl(kubeconfig, "delete", "validatingwebhookconfiguration", cfgName) })

	poll(t, time.Minute, "labelled ConfigMap rejected by the pod's webhook", func() error {
		_, _ = TryKubectl(kubeconfig, "-n", ns, "delete", "configmap", "denied", "--ignore-not-found")
		_, err := TryKubectl(kubeconfig, "-n", ns, "create", "configmap", "denied")
		if err != nil {
			return fmt.Errorf("unlabelled create failed: %w", err)
		}
		f := filepath.Join(t.TempDir(), "cm.yaml")
		_ = os.WriteFile(f, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: labelled, labels: {deny: \"true\"}}\n"), 0o600)
		_, err = TryKubectl(kubeconfig, "-n", ns, "create", "-f", f)
		if err == nil {
			_, _ = TryKubectl(kubeconfig, "-n", ns, "delete", "configmap", "labelled")
			return fmt.Errorf("labelled ConfigMap accepted")
		}
		if !strings.Contains(err.Error(), "netcheck webhook denies objects labelled deny=true") {
			return fmt.Errorf("rejected, but not by the webhook: %w", err)
		}
		return nil
	})
}

// A privileged pod on each node creates a tap device and sets ip_forward:
// what the runner pod does before starting QEMU.
func TestPrivilegedPodCreatesTap(t *testing.T) {
	kc(t)
	ns := namespace(t, "tap")
	for _, n := range Nodes {
		apply(t, ns, netcheckPod("tap-"+n, n, Image(t, "netcheck"), `"tap", "tap0"`,
			"    securityContext: {privileged: true}\n"))
	}
	for _, n := range Nodes {
		poll(t, 2*time.Minute, "tap pod on "+n+" succeeded", func() error {
			out, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", "tap-"+n, "-o", "jsonpath={.status.phase}")
			if err != nil {
				return err
			}
			if out == "Failed" {
				logs, _ := TryKubectl(kubeconfig, "-n", ns, "logs", "tap-"+n)
				t.Fatalf("tap pod on %s failed: %s", n, logs)
			}
			if out != "Succeeded" {
				return fmt.Errorf("phase %q", out)
			}
			return nil
		})
		logs := Kubectl(t, kubeconfig, "-n", ns, "logs", "tap-"+n)
		if !strings.Contains(logs, "tap tap0 created; ip_forward=1") {
			t.Errorf("tap pod on %s logged %q", n, logs)
		}
	}
}
