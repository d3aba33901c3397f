// Command neonvm-controller runs the NeonVM controller manager: the
// VirtualMachine reconciler (runner pods, live scaling, status) and the
// admission webhooks for VirtualMachine and VirtualMachineMigration.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	webhookv1 "github.com/vmscale/vmscale/internal/webhook/v1"
	"github.com/vmscale/vmscale/neonvm/controllers"
	"github.com/vmscale/vmscale/neonvm/controllers/webhookcert"
	"github.com/vmscale/vmscale/neonvm/podspec"
)

type runConfig struct {
	metricsAddr, probeAddr         string
	leaderElect                    bool
	webhookPort                    int
	webhookCertDir                 string
	selfSigned                     bool
	webhookService, webhookConfigs string
	defaultCPUScaling              string
	skipUpdateValidation           string
	enableWebhooks                 bool
	concurrency                    int
	settings                       podspec.Settings
	diskCopyCommand                string
	disableRunnerCgroup, atMostOne bool
	downtimeLimit                  time.Duration
	ipamRange, ipamPool            string
}

func main() {
	var cfg runConfig
	flag.StringVar(&cfg.metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables it)")
	flag.StringVar(&cfg.probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&cfg.leaderElect, "leader-elect", false, "hold a leader-election lease so only one replica reconciles")
	flag.IntVar(&cfg.webhookPort, "webhook-port", 9443, "port of the admission webhook server")
	flag.StringVar(&cfg.webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "folder holding tls.crt and tls.key for the webhook server")
	flag.BoolVar(&cfg.selfSigned, "webhook-self-signed", false, "generate a CA and serving certificate at start (into --webhook-cert-dir) and write the CA into --webhook-configurations; for clusters without cert-manager")
	flag.StringVar(&cfg.webhookService, "webhook-service", "neonvm-system/neonvm-webhook-service", "namespace/name of the webhook Service, for the self-signed certificate's names")
	flag.StringVar(&cfg.webhookConfigs, "webhook-configurations", "neonvm-mutating-webhook-configuration,neonvm-validating-webhook-configuration", "webhook configurations whose caBundle the self-signed mode keeps current")
	flag.StringVar(&cfg.defaultCPUScaling, "default-cpu-scaling-mode", string(vmv1.CPUScalingModeQMP), "cpuScalingMode written into VMs that have none: QmpScaling or SysfsScaling")
	flag.StringVar(&cfg.skipUpdateValidation, "skip-update-validation-for", "", "comma-separated namespace/name of objects whose update-validation failures are let through (with a SkippedValidation event)")
	flag.BoolVar(&cfg.enableWebhooks, "enable-webhooks", true, "serve the admission webhooks (off: reconcile only, e.g. a controller run outside the cluster)")
	flag.IntVar(&cfg.concurrency, "concurrency-limit", 1, "VirtualMachines reconciled at once")
	flag.StringVar(&cfg.settings.RunnerImage, "runner-image", os.Getenv("VM_RUNNER_IMAGE"), "neonvm-runner image for VMs that name none (default $VM_RUNNER_IMAGE)")
	flag.StringVar(&cfg.diskCopyCommand, "disk-copy-command", strings.Join(podspec.DefaultDiskCopyCommand, " "), "the root-disk init container's command (space-separated)")
	flag.StringVar(&cfg.settings.QEMUUser, "runner-qemu-user", "qemu", "user QEMU drops to in the runner image (empty: root)")
	flag.BoolVar(&cfg.settings.Privileged, "runner-privileged", false, "run runner pods privileged (clusters without the device plugins; the local cluster)")
	flag.BoolVar(&cfg.settings.AddSysResource, "runner-sys-resource", true, "give unprivileged runners CAP_SYS_RESOURCE")
	flag.BoolVar(&cfg.settings.KVMDevice, "kvm-device", false, "runner pods request neonvm/kvm (a device plugin must provide it)")
	flag.BoolVar(&cfg.settings.VhostNetDevice, "vhost-net-device", false, "runner pods request neonvm/vhost-net")
	flag.StringVar(&cfg.settings.MemhpAutoMovableRatio, "memhp-auto-movable-ratio", "301", "the guest's memory_hotplug.auto_movable_ratio")
	flag.StringVar(&cfg.settings.DiskCacheSettings, "qemu-disk-cache-settings", "cache=none", "QEMU -drive cache settings of writable disks")
	flag.BoolVar(&cfg.settings.UseVirtioConsole, "use-virtio-console", false, "guest console on hvc0")
	flag.DurationVar(&cfg.settings.DiskSyncInterval, "disk-sync-interval", 0, "how often runners re-sync watched disks (0: the runner's 30s)")
	flag.DurationVar(&cfg.downtimeLimit, "migration-downtime-limit", controllers.DefaultDowntimeLimit, "QEMU downtime-limit of live migrations: the longest pause QEMU plans for the final copy")
	flag.StringVar(&cfg.ipamRange, "ipam-range", "10.100.0.0/16", "IPv4 range (CIDR) of spec.extraNetwork addresses, for the IPPool when it is created (empty: no addresses; VMs run without their extra network)")
	flag.StringVar(&cfg.ipamPool, "ipam-pool-name", "neonvm-system/neonvm-overlay-net", "namespace/name of the IPPool that records spec.extraNetwork addresses (created on demand)")
	flag.StringVar(&cfg.settings.ExtraNetworkNAD, "extra-network-nad", podspec.DefaultExtraNetworkNAD, "Multus NetworkAttachmentDefinition (namespace/name) of spec.extraNetwork when a VM names none")
	flag.BoolVar(&cfg.disableRunnerCgroup, "disable-runner-cgroup", true, "accepted for NeonVM compatibility: vmscale's runner never manages a QEMU cgroup")
	flag.BoolVar(&cfg.atMostOne, "at-most-one-pod", false, "accepted for NeonVM compatibility: a stopped VM's pod is deleted before it restarts")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(ctrl.SetupSignalHandler(), cfg); err != nil {
		ctrl.Log.Error(err, "neonvm-controller failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg runConfig) error {
	mode := vmv1.CPUScalingMode(cfg.defaultCPUScaling)
	if mode != vmv1.CPUScalingModeQMP && mode != vmv1.CPUScalingModeSysfs {
		return fmt.Errorf("--default-cpu-scaling-mode: %q is neither %s nor %s", mode, vmv1.CPUScalingModeQMP, vmv1.CPUScalingModeSysfs)
	}
	skip, err := webhookv1.ParseSkipList(cfg.skipUpdateValidation)
	if err != nil {
		return err
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("register core types: %w", err)
	}
	if err := vmv1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("register vm.neon.tech types: %w", err)
	}

	var bundle *webhookcert.Bundle
	if cfg.selfSigned {
		ns, name, ok := strings.Cut(cfg.webhookService, "/")
		if !ok {
			return fmt.Errorf("--webhook-service: %q is not namespace/name", cfg.webhookService)
		}
		bundle, err = webhookcert.Generate(webhookcert.ServiceHosts(ns, name), time.Now(), 10*365*24*time.Hour)
		if err != nil {
			return err
		}
		if err := bundle.Write(cfg.webhookCertDir); err != nil {
			return err
		}
		ctrl.Log.Info("generated a self-signed webhook certificate", "dir", cfg.webhookCertDir, "service", cfg.webhookService)
	}

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
		return fmt.Errorf("create manager: %w", err)
	}

	recorder := mgr.GetEventRecorder("neonvm-controller")
	if cfg.enableWebhooks {
		if err := webhookv1.SetupWebhooksWithManager(mgr, webhookv1.WebhookConfig{
			DefaultCPUScalingMode:   mode,
			SkipUpdateValidationFor: skip,
			Recorder:                recorder,
		}); err != nil {
			return err
		}
	}
	cfg.settings.DefaultCPUScalingMode = mode
	cfg.settings.DiskCopyCommand = strings.Fields(cfg.diskCopyCommand)
	if cfg.settings.RunnerImage == "" {
		return fmt.Errorf("--runner-image (or $VM_RUNNER_IMAGE) is required: the image runner pods run")
	}
	m := controllers.NewMetrics(metrics.Registry, mgr.GetCache())
	var ipam *controllers.IPAM
	if cfg.ipamRange != "" {
		ns, name, ok := strings.Cut(cfg.ipamPool, "/")
		if !ok {
			return fmt.Errorf("--ipam-pool-name: %q is not namespace/name", cfg.ipamPool)
		}
		ipam, err = controllers.NewIPAM(mgr.GetClient(), mgr.GetAPIReader(), types.NamespacedName{Namespace: ns, Name: name}, cfg.ipamRange, metrics.Registry)
		if err != nil {
			return fmt.Errorf("--ipam-range/--ipam-pool-name: %w", err)
		}
	}
	if err := (&controllers.VMReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                recorder,
		Settings:                cfg.settings,
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
		Settings:                cfg.settings,
		Metrics:                 m,
		DowntimeLimit:           cfg.downtimeLimit,
		MaxConcurrentReconciles: cfg.concurrency,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the VirtualMachineMigration reconciler: %w", err)
	}
	if bundle != nil {
		if err := mgr.Add(&webhookcert.Injector{
			Client:         mgr.GetClient(),
			CAPEM:          bundle.CAPEM,
			Configurations: splitList(cfg.webhookConfigs),
			Interval:       time.Minute,
		}); err != nil {
			return fmt.Errorf("add webhook CA injector: %w", err)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if cfg.enableWebhooks {
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return fmt.Errorf("add ready check: %w", err)
		}
	}

	ctrl.Log.Info("starting neonvm-controller", "webhooks", cfg.enableWebhooks, "webhookPort", cfg.webhookPort,
		"defaultCPUScalingMode", mode, "runnerImage", cfg.settings.RunnerImage, "concurrency", cfg.concurrency,
		"ipamRange", cfg.ipamRange, "ipamPool", cfg.ipamPool)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
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
