package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	webhookv1 "github.com/vmscale/vmscale/internal/webhook/v1"
	"github.com/vmscale/vmscale/neonvm/controllers"
	"github.com/vmscale/vmscale/neonvm/controllers/webhookcert"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

// run wires the manager from cfg and runs it until ctx ends.
func run(ctx context.Context, log *slog.Logger, cfg runConfig) error {
	opts, err := parseOptions(cfg)
	if err != nil {
		return err
	}
	scheme, err := newScheme()
	if err != nil {
		return err
	}
	bundle, err := setupCertificates(log, cfg, opts)
	if err != nil {
		return err
	}
	mgr, err := newManager(scheme, cfg)
	if err != nil {
		return err
	}
	recorder := mgr.GetEventRecorder("neonvm-controller")
	if cfg.enableWebhooks {
		if err := setupWebhooks(mgr, recorder, opts); err != nil {
			return err
		}
	}
	if err := setupReconcilers(mgr, recorder, cfg, opts); err != nil {
		return err
	}
	if err := setupCAInjector(mgr, cfg, bundle); err != nil {
		return err
	}
	if err := addHealthChecks(mgr, cfg.enableWebhooks); err != nil {
		return err
	}

	log.Info("starting neonvm-controller", "webhooks", cfg.enableWebhooks, "webhookPort", cfg.webhookPort,
		"defaultCPUScalingMode", opts.mode, "runnerImage", opts.settings.RunnerImage, "concurrency", cfg.concurrency,
		"ipamRange", cfg.ipamRange, "ipamPool", cfg.ipamPool)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// options are the flags that need parsing or checking, done before
// anything is written or the cluster is contacted, so a bad flag fails
// alone and says which.
type options struct {
	mode           vmv1.CPUScalingMode
	skip           map[types.NamespacedName]struct{}
	settings       podspec.Settings
	webhookService types.NamespacedName // self-signed mode only
	ipamPool       types.NamespacedName // with --ipam-range only
}

func parseOptions(cfg runConfig) (options, error) {
	var o options
	o.mode = vmv1.CPUScalingMode(cfg.defaultCPUScaling)
	if o.mode != vmv1.CPUScalingModeQMP && o.mode != vmv1.CPUScalingModeSysfs {
		return o, fmt.Errorf("--default-cpu-scaling-mode: %q is neither %s nor %s", o.mode, vmv1.CPUScalingModeQMP, vmv1.CPUScalingModeSysfs)
	}
	skip, err := webhookv1.ParseSkipList(cfg.skipUpdateValidation)
	if err != nil {
		return o, err // names the flag already
	}
	o.skip = skip
	if cfg.selfSigned {
		if o.webhookService, err = namespacedName(cfg.webhookService); err != nil {
			return o, fmt.Errorf("--webhook-service: %w", err)
		}
	}
	o.settings = cfg.settings
	o.settings.DefaultCPUScalingMode = o.mode
	o.settings.DiskCopyCommand = strings.Fields(cfg.diskCopyCommand)
	if o.settings.RunnerImage == "" {
		return o, errors.New("--runner-image (or $VM_RUNNER_IMAGE) is required: the image runner pods run")
	}
	if cfg.ipamRange != "" {
		if o.ipamPool, err = namespacedName(cfg.ipamPool); err != nil {
			return o, fmt.Errorf("--ipam-pool-name: %w", err)
		}
	}
	return o, nil
}

func namespacedName(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return types.NamespacedName{}, fmt.Errorf("%q is not namespace/name", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register core types: %w", err)
	}
	if err := vmv1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register vm.neon.tech types: %w", err)
	}
	return scheme, nil
}

// setupCertificates makes the webhook server's CA and certificate in
// self-signed mode (the CA goes into the webhook configurations later);
// nil otherwise: cert-manager provides them.
func setupCertificates(log *slog.Logger, cfg runConfig, o options) (*webhookcert.Bundle, error) {
	if !cfg.selfSigned {
		return nil, nil
	}
	svc := o.webhookService
	bundle, err := webhookcert.Generate(webhookcert.ServiceHosts(svc.Namespace, svc.Name), time.Now(), 10*365*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("self-signed webhook certificate: %w", err)
	}
	if err := bundle.Write(cfg.webhookCertDir); err != nil {
		return nil, fmt.Errorf("self-signed webhook certificate: %w", err)
	}
	log.Info("generated a self-signed webhook certificate", "dir", cfg.webhookCertDir, "service", cfg.webhookService)
	return bundle, nil
}

func newManager(scheme *runtime.Scheme, cfg runConfig) (ctrl.Manager, error) {
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: cfg.metricsAddr},
		HealthProbeBindAddress: cfg.probeAddr,
		LeaderElection:         cfg.leaderElect,
		LeaderElectionID:       "neonvm-controller.vm.neon.tech",
		WebhookServer: webhook.NewServer(webhook.Options{
			Port:    cfg.webhookPort,
			CertDir: cfg.webhookCertDir,
		}),
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	return mgr, nil
}

func setupWebhooks(mgr ctrl.Manager, recorder events.EventRecorder, o options) error {
	err := webhookv1.SetupWebhooksWithManager(mgr, webhookv1.WebhookConfig{
		DefaultCPUScalingMode:   o.mode,
		SkipUpdateValidationFor: o.skip,
		Recorder:                recorder,
	})
	if err != nil {
		return fmt.Errorf("set up the webhooks: %w", err)
	}
	return nil
}

// setupReconcilers registers the VirtualMachine and migration reconcilers,
// sharing one set of metrics.
func setupReconcilers(mgr ctrl.Manager, recorder events.EventRecorder, cfg runConfig, o options) error {
	m := controllers.NewMetrics(metrics.Registry, mgr.GetCache())
	var ipam *controllers.IPAM
	if cfg.ipamRange != "" {
		var err error
		ipam, err = controllers.NewIPAM(mgr.GetClient(), mgr.GetAPIReader(), o.ipamPool, cfg.ipamRange, metrics.Registry)
		if err != nil {
			return fmt.Errorf("--ipam-range/--ipam-pool-name: %w", err)
		}
	}
	if err := (&controllers.VMReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                recorder,
		Settings:                o.settings,
		Metrics:                 m,
		IPAM:                    ipam,
		MaxConcurrentReconciles: cfg.concurrency,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the VirtualMachine reconciler: %w", err)
	}
	if err := (&controllers.MigrationReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                recorder,
		Settings:                o.settings,
		Metrics:                 m,
		DowntimeLimit:           cfg.downtimeLimit,
		LiveMigrationUnderTCG:   cfg.liveMigrationUnderTCG,
		MaxConcurrentReconciles: cfg.concurrency,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the VirtualMachineMigration reconciler: %w", err)
	}
	return nil
}

// setupCAInjector keeps the self-signed CA in the webhook configurations
// (someone re-applying the manifests blanks it); nothing without a bundle.
func setupCAInjector(mgr ctrl.Manager, cfg runConfig, bundle *webhookcert.Bundle) error {
	if bundle == nil {
		return nil
	}
	if err := mgr.Add(&webhookcert.Injector{
		Client:         mgr.GetClient(),
		CAPEM:          bundle.CAPEM,
		Configurations: splitList(cfg.webhookConfigs),
		Interval:       time.Minute,
	}); err != nil {
		return fmt.Errorf("add webhook CA injector: %w", err)
	}
	return nil
}

// addHealthChecks: alive while the process runs; ready once the webhook
// server serves (when there is one), so no admission request reaches a
// replica that cannot answer it.
func addHealthChecks(mgr ctrl.Manager, webhooks bool) error {
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if webhooks {
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return fmt.Errorf("add ready check: %w", err)
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
