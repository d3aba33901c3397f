package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/vmscale/vmscale/tests/testbin"
)

// The real neonvm-controller binary, in self-signed mode, against the real
// apiserver: it becomes ready, writes its generated CA into the named webhook
// configuration, serves metrics, and stops cleanly on SIGTERM.
func TestControllerBinarySelfSigned(t *testing.T) {
	ctx := context.Background()
	bin := buildController(t)
	kubeconfig := adminKubeconfig(t)

	// Scoped to no namespace, so the suite's other tests never call it.
	svc := admissionregistrationv1.ServiceReference{Namespace: "neonvm-system", Name: "neonvm-webhook-service", Path: ptr.To("/mutate-vm-neon-tech-v1-virtualmachine")}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "binary-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "mvirtualmachine.binary.test",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{Service: &svc},
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"never": "matches"}},
		}},
	}
	if err := k8sClient.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), mwc) })

	certDir := t.TempDir()
	probePort, metricsPort := testbin.FreePort(t), testbin.FreePort(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig,
		"--webhook-self-signed",
		"--runner-image=vmscale/neonvm-runner:test",
		"--webhook-cert-dir="+certDir,
		fmt.Sprintf("--webhook-port=%d", testbin.FreePort(t)),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort),
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		"--webhook-configurations=binary-test",
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("neonvm-controller output:\n%s", logs.String())
		}
	}()

	eventually(t, 60*time.Second, "controller ready", func() error {
		return httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort))
	})
	ca, err := os.ReadFile(filepath.Join(certDir, "ca.crt"))
	if err != nil {
		t.Fatalf("no CA written: %v", err)
	}
	eventually(t, 30*time.Second, "CA injected", func() error {
		var got admissionregistrationv1.MutatingWebhookConfiguration
		if err := k8sClient.Get(ctx, client.ObjectKey{Name: "binary-test"}, &got); err != nil {
			return err
		}
		if !bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, ca) {
			return errNotYet("caBundle differs from the generated CA")
		}
		return nil
	})
	if err := httpOK(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err != nil {
		t.Errorf("metrics: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
}

func TestControllerBinaryRejectsBadFlags(t *testing.T) {
	bin := buildController(t)
	out, err := exec.Command(bin, "--kubeconfig="+adminKubeconfig(t), "--default-cpu-scaling-mode=Turbo").CombinedOutput()
	if err == nil {
		t.Fatal("started with --default-cpu-scaling-mode=Turbo")
	}
	if !strings.Contains(string(out), `--default-cpu-scaling-mode: \"Turbo\" is neither QmpScaling nor SysfsScaling`) {
		t.Fatalf("unclear error:\n%s", out)
	}
}

func buildController(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, repoRoot, "./cmd/neonvm-controller")
}

func adminKubeconfig(t *testing.T) string {
	t.Helper()
	user, err := testEnv.AddUser(envtest.User{Name: "neonvm-controller-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func httpOK(url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
