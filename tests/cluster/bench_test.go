package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	testpoll "github.com/vmscale/vmscale/tests/poll"
)

// benchNode is where the runner-pod benchmark runs its pods.
const benchNode = "node-b"

// BenchmarkRunnerPodReachable measures a runner pod from its creation to
// the guest's Postgres answering a query on the pod IP (psql from the host,
// which routes to pod IPs), with the node's image cache cold (the runner
// and root-disk images removed from the node's containerd and imported
// again, as a fresh node would pull them; the import is part of the time)
// and warm. Figures go to $VMSCALE_CACHE/bench/cluster.txt with the
// cold/warm ratio.
func BenchmarkRunnerPodReachable(b *testing.B) {
	kc(b)
	ns := namespace(b, "bench-runnerpod")
	if _, err := exec.LookPath("psql"); err != nil {
		b.Fatalf("psql is missing (hack/qemu.sh installs postgresql-client): %v", err)
	}
	vm := runnerVM(b, ns, "bench")
	vm.Spec.Disks = nil
	results := map[string]time.Duration{}
	for _, mode := range []string{"cold", "warm"} {
		b.Run(mode, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				pod := fmt.Sprintf("bench-%s-%d", mode, i)
				start := time.Now()
				if mode == "cold" {
					reimportImages(b, benchNode, "neonvm-runner", "vm-postgres")
				}
				applyRunnerPodOn(b, vm, pod, benchNode)
				var ip string
				poll(b, 5*time.Minute, pod+" has an IP", func() error {
					out, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.podIP}")
					if ip = strings.TrimSpace(out); err == nil && ip == "" {
						err = fmt.Errorf("no pod IP yet")
					}
					return err
				})
				testpoll.Until(b, 5*time.Minute, 100*time.Millisecond, "Postgres on "+ip, func() error {
					out, err := exec.Command("psql", "-h", ip, "-U", "postgres", "-At", "-c", "select 1").CombinedOutput()
					if err != nil || strings.TrimSpace(string(out)) != "1" {
						return fmt.Errorf("psql: %v: %s", err, out)
					}
					return nil
				})
				total += time.Since(start)
				b.StopTimer()
				Kubectl(b, kubeconfig, "-n", ns, "delete", "pod", pod, "--wait=true", "--timeout=120s")
				b.StartTimer()
			}
			avg := total / time.Duration(b.N)
			results[mode] = avg
			b.ReportMetric(float64(avg.Milliseconds()), "ms-to-postgres/op")
		})
	}
	if results["cold"] > 0 && results["warm"] > 0 {
		line := fmt.Sprintf("%s runner_pod_to_postgres cold_ms=%d warm_ms=%d cold/warm=%.2f",
			time.Now().UTC().Format(time.RFC3339), results["cold"].Milliseconds(), results["warm"].Milliseconds(),
			float64(results["cold"])/float64(results["warm"]))
		path := filepath.Join(cacheDir(), "bench", "cluster.txt")
		_ = os.MkdirAll(filepath.Dir(path), 0o755)
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintln(f, line)
		f.Close()
		b.Log(line)
	}
}

// reimportImages removes images from node's containerd and imports them
// again from make images' tarballs.
func reimportImages(t testing.TB, node string, names ...string) {
	t.Helper()
	sock := filepath.Join(clusterDir(), "nodes", node, "containerd.sock")
	for _, n := range names {
		ref := Image(t, n)
		ctr := func(args ...string) error {
			out, err := exec.Command("ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		if err := ctr("images", "rm", "--sync", "docker.io/"+ref); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Fatal(err)
		}
		if err := ctr("images", "import", "--no-unpack=false", filepath.Join(cacheDir(), "images", n+".tar")); err != nil {
			t.Fatal(err)
		}
	}
}
