package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/tests/poll"
)

// BenchmarkReconcileThroughput creates 200 VMs at once on the real
// apiserver (no kubelet: their runner pods stay Pending) and measures the
// time until every one has its pod name persisted and its runner pod
// created: finalizer, status and SSH secret writes included. Figures go to
// $VMSCALE_CACHE/bench/controller.txt.
func BenchmarkReconcileThroughput(b *testing.B) {
	const n = 200
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		ns := fmt.Sprintf("vm-bench-%d-%d", time.Now().UnixNano()%100000, i)
		nsObj := &corev1.Namespace{}
		nsObj.Name = ns
		if err := k8sClient.Create(ctx, nsObj); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for j := 0; j < n; j++ {
			if err := k8sClient.Create(ctx, smallVM(ns, fmt.Sprintf("vm%03d", j))); err != nil {
				b.Fatal(err)
			}
		}
		created := time.Since(start)
		poll.Until(b, 5*time.Minute, 100*time.Millisecond, "runner pods for every VM", func() error {
			var pods corev1.PodList
			if err := k8sClient.List(ctx, &pods, client.InNamespace(ns)); err != nil {
				return err
			}
			if len(pods.Items) < n {
				return fmt.Errorf("%d of %d pods", len(pods.Items), n)
			}
			return nil
		})
		total := time.Since(start)
		var vms vmv1.VirtualMachineList
		if err := k8sClient.List(ctx, &vms, client.InNamespace(ns)); err != nil {
			b.Fatal(err)
		}
		for _, vm := range vms.Items {
			if vm.Status.PodName == "" || vm.Status.Phase != vmv1.VmPending {
				b.Fatalf("%s: phase %q pod %q", vm.Name, vm.Status.Phase, vm.Status.PodName)
			}
		}
		perSec := float64(n) / total.Seconds()
		b.ReportMetric(perSec, "vms/s")
		line := fmt.Sprintf("%s reconcile_200_pending_vms create_ms=%d all_pods_ms=%d vms_per_s=%.1f",
			time.Now().UTC().Format(time.RFC3339), created.Milliseconds(), total.Milliseconds(), perSec)
		if cache := benchCache(); cache != "" {
			_ = os.MkdirAll(filepath.Join(cache, "bench"), 0o755)
			if f, err := os.OpenFile(filepath.Join(cache, "bench", "controller.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				fmt.Fprintln(f, line)
				f.Close()
			}
		}
		b.Log(line)
	}
}

func benchCache() string {
	if c := os.Getenv("VMSCALE_CACHE"); c != "" {
		return c
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".cache", "vmscale")
}
