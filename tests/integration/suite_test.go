// Package integration tests vmscale's API against real Kubernetes binaries:
// etcd and kube-apiserver started by controller-runtime's envtest, the CRDs
// from config/crd/bases, and the admission webhooks served by a real
// controller-runtime manager over TLS, called by the apiserver.
package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	webhookv1 "github.com/vmscale/vmscale/internal/webhook/v1"
	"github.com/vmscale/vmscale/neonvm/controllers"
	"github.com/vmscale/vmscale/neonvm/podspec"
	"github.com/vmscale/vmscale/tests/testbin"
)

const repoRoot = "../.."

// skippedVM is on the manager's --skip-update-validation-for list.
// testSettings are the VM reconciler's runner pod settings in this suite.
var testSettings = podspec.Settings{RunnerImage: "vmscale/neonvm-runner:test", QEMUUser: "qemu", DefaultCPUScalingMode: vmv1.CPUScalingModeQMP}

var skippedVM = types.NamespacedName{Namespace: "skip-validation", Name: "legacy"}

// suiteIPPool records the extra-network addresses of the suite's VM
// reconciler (range 10.100.0.0/16).
var suiteIPPool = types.NamespacedName{Namespace: "default", Name: "neonvm-overlay-net"}

var (
	testEnv   *envtest.Environment
	k8sClient client.Client
	cfg       *rest.Config
	scheme    = runtime.NewScheme()
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	defer testbin.Cleanup()
	logf.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: managerLogLevel()})))
	must(clientgoscheme.AddToScheme(scheme))
	must(vmv1.AddToScheme(scheme))
	must(apiextensionsv1.AddToScheme(scheme))

	assets, err := kubeAssets()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: no Kubernetes binaries:", err)
		return 1
	}
	testEnv = &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join(repoRoot, "config", "webhook", "manifests.yaml")},
		},
	}
	// envtest runs etcd with --unsafe-no-fsync when it can; the suite's
	// benchmarks measure writes, so etcd syncs its log as in a cluster
	// (fdatasync takes ~0.2 ms on this project's machines).
	testEnv.ControlPlane.Etcd = &envtest.Etcd{}
	testEnv.ControlPlane.Etcd.Configure().Set("unsafe-no-fsync", "false")
	cfg, err = testEnv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: start etcd and kube-apiserver:", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "integration: stop envtest:", err)
		}
	}()

	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: client:", err)
		return 1
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped, err := startManager(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: manager:", err)
		return 1
	}
	code := m.Run()
	cancel()
	<-stopped
	return code
}

// startManager runs a manager serving vmscale's webhooks where envtest's
// webhook configurations point, and waits until it accepts TLS connections.
func startManager(ctx context.Context) (<-chan struct{}, error) {
	wio := &testEnv.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host:    wio.LocalServingHost,
			Port:    wio.LocalServingPort,
			CertDir: wio.LocalServingCertDir,
		}),
	})
	if err != nil {
		return nil, err
	}
	if err := webhookv1.SetupWebhooksWithManager(mgr, webhookv1.WebhookConfig{
		DefaultCPUScalingMode:   vmv1.CPUScalingModeQMP,
		SkipUpdateValidationFor: map[types.NamespacedName]struct{}{skippedVM: {}},
		Recorder:                mgr.GetEventRecorder("neonvm-controller"),
	}); err != nil {
		return nil, err
	}
	// The VM reconciler, against the real apiserver; no kubelet runs here,
	// so runner pods stay Pending unless a test sets their status.
	ipam, err := controllers.NewIPAM(mgr.GetClient(), mgr.GetAPIReader(), suiteIPPool, "10.100.0.0/16", nil)
	if err != nil {
		return nil, err
	}
	if err := (&controllers.VMReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("neonvm-controller"),
		Settings:  testSettings,
		Metrics:   controllers.NewMetrics(nil, nil),
		IPAM:      ipam,
		// Only the controller tests' namespaces: the API tests set VM
		// statuses by hand.
		EventFilter: predicate.NewPredicateFuncs(func(o client.Object) bool { return strings.HasPrefix(o.GetNamespace(), "vm-") }),
	}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if err := (&controllers.MigrationReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("neonvm-controller"),
		Settings:    testSettings,
		EventFilter: predicate.NewPredicateFuncs(func(o client.Object) bool { return strings.HasPrefix(o.GetNamespace(), "vm-") }),
	}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "integration: manager stopped:", err)
		}
	}()
	addr := net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // readiness probe only
		if err == nil {
			_ = conn.Close()
			return stopped, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("webhook server at %s not serving after 30s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kubeAssets finds etcd, kube-apiserver and kubectl: KUBEBUILDER_ASSETS when
// set (hack/test.sh sets it), else it installs them with the project's own
// script, which is idempotent and cached.
func kubeAssets() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	fmt.Fprintln(os.Stderr, "integration: KUBEBUILDER_ASSETS unset; running hack/k8s-binaries.sh")
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "k8s-binaries.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/k8s-binaries.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// managerLogLevel keeps the manager quiet unless VMSCALE_TEST_VERBOSE is
// set.
func managerLogLevel() slog.Level {
	if os.Getenv("VMSCALE_TEST_VERBOSE") != "" {
		return slog.LevelDebug
	}
	return slog.LevelError
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
