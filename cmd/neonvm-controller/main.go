// Command neonvm-controller runs the NeonVM controller manager: the
// VirtualMachine reconciler (runner pods, live scaling, status) and the
// admission webhooks for VirtualMachine and VirtualMachineMigration.
package main

import (
	"flag"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/controllers"
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
	liveMigrationUnderTCG          bool
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
	flag.BoolVar(&cfg.liveMigrationUnderTCG, "live-migration-under-tcg", false, "migrate guests that run under TCG (no KVM) live, as under KVM; off: they are paused for the transfer (QEMU 7.2's live migration under TCG can leave the guest's memory stale: docs/design.md)")
	flag.StringVar(&cfg.ipamRange, "ipam-range", "10.100.0.0/16", "IPv4 range (CIDR) of spec.extraNetwork addresses, for the IPPool when it is created (empty: no addresses; VMs run without their extra network)")
	flag.StringVar(&cfg.ipamPool, "ipam-pool-name", "neonvm-system/neonvm-overlay-net", "namespace/name of the IPPool that records spec.extraNetwork addresses (created on demand)")
	flag.StringVar(&cfg.settings.ExtraNetworkNAD, "extra-network-nad", podspec.DefaultExtraNetworkNAD, "Multus NetworkAttachmentDefinition (namespace/name) of spec.extraNetwork when a VM names none")
	flag.BoolVar(&cfg.disableRunnerCgroup, "disable-runner-cgroup", true, "accepted for NeonVM compatibility: vmscale's runner never manages a QEMU cgroup")
	flag.BoolVar(&cfg.atMostOne, "at-most-one-pod", false, "accepted for NeonVM compatibility: a stopped VM's pod is deleted before it restarts")
	var logFlags logFlags
	logFlags.bind(flag.CommandLine)
	flag.Parse()
	log := logFlags.logger(os.Stderr)
	// controller-runtime (and the reconcilers, through the request
	// context) log through logr: the same handler, so one format.
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	if err := run(ctrl.SetupSignalHandler(), log, cfg); err != nil {
		log.Error("neonvm-controller failed", "err", err)
		os.Exit(1)
	}
}
