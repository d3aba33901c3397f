package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	webhookv1 "github.com/vmscale/vmscale/internal/webhook/v1"
	"github.com/vmscale/vmscale/neonvm/controllers/webhookcert"
	"github.com/vmscale/vmscale/tests/testbin"
)

// Without cert-manager the manager makes its own CA and serving certificate
// and writes the CA into the webhook configuration; the apiserver then calls
// the webhook over verified TLS. Before the injection the apiserver cannot
// verify the server and (failurePolicy Fail) rejects every create.
func TestSelfSignedWebhookCertificate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := newNamespace(t, "self-signed")

	bundle, err := webhookcert.Generate([]string{"127.0.0.1", "localhost"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	if err := bundle.Write(certDir); err != nil {
		t.Fatal(err)
	}
	port := testbin.FreePort(t)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:        scheme,
		Metrics:       metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: certDir}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := webhookv1.SetupWebhooksWithManager(mgr, webhookv1.WebhookConfig{DefaultCPUScalingMode: vmv1.CPUScalingModeSysfs}); err != nil {
		t.Fatal(err)
	}

	// A configuration of our own, scoped to this test's namespace, with no
	// caBundle: what `kubectl apply -k config/local` creates. The apiserver
	// calls mutating webhooks in configuration-name order, so "a-..." runs
	// before the suite's own defaulter and its SysfsScaling default shows.
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate-vm-neon-tech-v1-virtualmachine", port)
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "a-self-signed-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "mvirtualmachine.self-signed.test",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
				"kubernetes.io/metadata.name": ns,
			}},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{"vm.neon.tech"}, APIVersions: []string{"v1"}, Resources: []string{"virtualmachines"},
				},
			}},
		}},
	}
	if err := k8sClient.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), mwc) })

	stopped := make(chan struct{})
	go func() { defer close(stopped); _ = mgr.Start(ctx) }()
	defer func() { cancel(); <-stopped }()

	vm := mustYAML(t, validVM)
	vm.SetNamespace(ns)
	// The server is up but its CA is not trusted yet: creates fail.
	eventually(t, 30*time.Second, "create fails on an untrusted certificate", func() error {
		err := k8sClient.Create(ctx, vm.DeepCopy(), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "x509") {
			return nil
		}
		return fmt.Errorf("want an x509 error, got %v", err)
	})

	injector := &webhookcert.Injector{Client: k8sClient, CAPEM: bundle.CAPEM, Configurations: []string{"a-self-signed-test", "absent-config"}}
	if n, err := injector.InjectOnce(ctx); err != nil || n != 1 {
		t.Fatalf("InjectOnce = %d, %v; want 1 configuration updated", n, err)
	}
	if n, err := injector.InjectOnce(ctx); err != nil || n != 0 {
		t.Fatalf("second InjectOnce = %d, %v; want nothing to update", n, err)
	}
	// Now the apiserver verifies our certificate and our webhook (configured
	// with SysfsScaling, unlike the suite's) defaults the object.
	eventually(t, 30*time.Second, "create through the self-signed webhook", func() error {
		obj := vm.DeepCopy()
		if err := k8sClient.Create(ctx, obj, client.DryRunAll); err != nil {
			return err
		}
		mode, _, _ := nestedValue(obj.Object, "spec.cpuScalingMode")
		if mode != "SysfsScaling" {
			return fmt.Errorf("cpuScalingMode = %v; want SysfsScaling from the self-signed webhook", mode)
		}
		return nil
	})
}
