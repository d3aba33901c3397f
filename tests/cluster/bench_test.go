package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
		appendBench(b, fmt.Sprintf("runner_pod_to_postgres cold_ms=%d warm_ms=%d cold/warm=%.2f",
			results["cold"].Milliseconds(), results["warm"].Milliseconds(), float64(results["cold"])/float64(results["warm"])))
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

// BenchmarkLiveMigration moves a 1 GiB guest between the nodes with a
// VirtualMachineMigration, idle and with Postgres rewriting its memory (an
// in-memory sort running in a loop). Per case it reports the wall time
// from the migration's creation to Succeeded, QEMU's own total time and
// downtime for the same transfer (query-migrate), and their ratio: what
// the controller adds (target pod scheduling, runner and QEMU start, QMP
// set-up) on top of the transfer itself. Figures go to
// $VMSCALE_CACHE/bench/cluster.txt.
func BenchmarkLiveMigration(b *testing.B) {
	kc(b)
	installCRDs(b)
	ns := namespace(b, "bench-migration")
	startController(b, buildController(b))
	apply(b, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: big
spec:
  restartPolicy: Never
  cpuScalingMode: SysfsScaling
  guest:
    cpus: {min: 1, max: 2, use: 2}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 4, use: 4}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
`, Image(b, "vm-postgres")))
	waitVM(b, ns, "big", 6*time.Minute, "VM Running with 1Gi", func(s vmStatus) error {
		if s.Phase != "Running" || s.MemorySize != "1Gi" {
			return fmt.Errorf("phase %q memory %q", s.Phase, s.MemorySize)
		}
		return nil
	})
	lines := make([]string, 2)
	n := 0
	for i, mode := range []string{"idle", "busy"} {
		b.Run(mode, func(b *testing.B) {
			var wall, total, down time.Duration
			for i := 0; i < b.N; i++ {
				st := mustVMStatus(b, ns, "big")
				loadCtx, stop := context.WithCancel(context.Background())
				done := make(chan struct{})
				if mode == "busy" {
					go func() {
						defer close(done)
						for loadCtx.Err() == nil {
							_, _ = guestQueryCtx(loadCtx, st.PodIP, "set work_mem='400MB'; select count(*) from (select g from generate_series(1, 4000000) g order by random()) s")
						}
					}()
					// The transfer starts once the sort runs.
					poll(b, time.Minute, "the memory-rewriting sort running", func() error {
						out, err := guestQuery(st.PodIP, "select count(*) from pg_stat_activity where state = 'active' and query like '%order by random()%' and pid <> pg_backend_pid()")
						if err == nil && out != "1" {
							err = fmt.Errorf("%q sorts running", out)
						}
						return err
					})
				} else {
					close(done)
				}
				n++
				name := fmt.Sprintf("m%d", n)
				start := time.Now()
				createMigration(b, ns, name, "big", "")
				m := waitVMM(b, ns, name, 10*time.Minute, "migration "+name, func(s vmmStatus) error {
					if s.Phase == "Failed" {
						b.Fatalf("migration failed: %+v", s.Conditions)
					}
					if s.Phase != "Succeeded" {
						return fmt.Errorf("phase %q", s.Phase)
					}
					return nil
				})
				wall += time.Since(start)
				stop()
				<-done
				total += time.Duration(m.Info.TotalTimeMs) * time.Millisecond
				down += time.Duration(m.Info.DowntimeMs) * time.Millisecond
				waitVM(b, ns, "big", 2*time.Minute, "VM Running after the move", func(s vmStatus) error {
					if s.Phase != "Running" || s.PodName != m.TargetPodName {
						return fmt.Errorf("phase %q pod %q", s.Phase, s.PodName)
					}
					return nil
				})
			}
			w, q, d := wall/time.Duration(b.N), total/time.Duration(b.N), down/time.Duration(b.N)
			b.ReportMetric(float64(w.Milliseconds()), "wall-ms/op")
			b.ReportMetric(float64(q.Milliseconds()), "qemu-total-ms/op")
			b.ReportMetric(float64(d.Milliseconds()), "downtime-ms/op")
			lines[i] = fmt.Sprintf("migration_1GiB_%s wall_ms=%d qemu_total_ms=%d downtime_ms=%d wall/qemu=%.2f",
				mode, w.Milliseconds(), q.Milliseconds(), d.Milliseconds(), float64(w)/float64(max(q, time.Millisecond)))
		})
	}
	appendBench(b, strings.Join(lines, " | "))
}

// appendBench adds a dated line to $VMSCALE_CACHE/bench/cluster.txt.
func appendBench(t testing.TB, line string) { appendBenchTo(t, "cluster.txt", line) }

// appendBenchTo adds a dated line to $VMSCALE_CACHE/bench/<file>.
func appendBenchTo(t testing.TB, file, line string) {
	line = time.Now().UTC().Format(time.RFC3339) + " " + line
	path := filepath.Join(cacheDir(), "bench", file)
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, line)
	t.Log(line)
}

// BenchmarkControllerScaling measures, through the controller in the local
// cluster, a VM spec patch until the status shows it and until the guest
// itself sees it, for +1 vCPU (SysfsScaling: TCG here), +256 MiB and
// +1 GiB (virtio-mem). Each case is undone untimed. The guest-side figures
// are set against the raw QMP figures of `make bench`'s guest benchmark
// (bench/guest.txt), when there are any: the ratio is the controller's
// overhead on top of QEMU and the guest.
func BenchmarkControllerScaling(b *testing.B) {
	kc(b)
	installCRDs(b)
	ns := namespace(b, "bench-scaling")
	startController(b, buildController(b))
	apply(b, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: s
spec:
  restartPolicy: Never
  cpuScalingMode: SysfsScaling
  guest:
    cpus: {min: 1, max: 2, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 8, use: 2}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
`, Image(b, "vm-postgres")))
	st := waitVM(b, ns, "s", 6*time.Minute, "VM Running", func(s vmStatus) error {
		if s.Phase != "Running" {
			return fmt.Errorf("phase %q", s.Phase)
		}
		return nil
	})
	ip := st.PodIP
	baseMem, err := guestMemTotalKiB(ip)
	if err != nil {
		b.Fatal(err)
	}
	type scaleCase struct {
		name          string
		up, down      string
		statusCPU     string
		statusMem     string
		guestSees     func() error
		guestBaseline string // key in bench/guest.txt
	}
	onlineCPUs := func(want string) func() error {
		return func() error {
			out, err := guestQuery(ip, "select pg_read_file('/sys/devices/system/cpu/online')")
			if err == nil && out != want {
				err = fmt.Errorf("online %q", out)
			}
			return err
		}
	}
	memAbove := func(kib int) func() error {
		return func() error {
			m, err := guestMemTotalKiB(ip)
			if err == nil && m-baseMem < kib {
				err = fmt.Errorf("MemTotal +%d KiB", m-baseMem)
			}
			return err
		}
	}
	cases := []scaleCase{
		{"+1vCPU", `{"spec":{"guest":{"cpus":{"use":2}}}}`, `{"spec":{"guest":{"cpus":{"use":1}}}}`, "2", "512Mi", onlineCPUs("0-1"), "vcpu_plus1_ms"},
		{"+256MiB", `{"spec":{"guest":{"memorySlots":{"use":3}}}}`, `{"spec":{"guest":{"memorySlots":{"use":2}}}}`, "1", "768Mi", memAbove(250 * 1024), "mem_plus256Mi_ms"},
		{"+1GiB", `{"spec":{"guest":{"memorySlots":{"use":6}}}}`, `{"spec":{"guest":{"memorySlots":{"use":2}}}}`, "1", "1536Mi", memAbove(1000 * 1024), ""},
	}
	baseline := guestBenchFigures()
	// b.Run calls each case more than once (N=1 first): keep the last.
	lines := make([]string, len(cases))
	for i, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var toStatus, toGuest time.Duration
			for i := 0; i < b.N; i++ {
				start := time.Now()
				Kubectl(b, kubeconfig, "-n", ns, "patch", "neonvm", "s", "--type=merge", "-p", c.up)
				statusDone := make(chan time.Duration, 1)
				go func() {
					for {
						s, err := getVMStatus(ns, "s")
						if err == nil && s.Phase == "Running" && cpuString(s.CPUs) == c.statusCPU && s.MemorySize == c.statusMem {
							statusDone <- time.Since(start)
							return
						}
						if time.Since(start) > 3*time.Minute {
							statusDone <- -1
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}()
				testpoll.Until(b, 3*time.Minute, 50*time.Millisecond, "guest sees "+c.name, c.guestSees)
				toGuest += time.Since(start)
				d := <-statusDone
				if d < 0 {
					b.Fatalf("status never showed %s", c.name)
				}
				toStatus += d
				b.StopTimer()
				Kubectl(b, kubeconfig, "-n", ns, "patch", "neonvm", "s", "--type=merge", "-p", c.down)
				waitVM(b, ns, "s", 3*time.Minute, "scaled back", func(s vmStatus) error {
					if s.Phase != "Running" || cpuString(s.CPUs) != "1" || s.MemorySize != "512Mi" {
						return fmt.Errorf("phase %q cpus %v memory %q", s.Phase, s.CPUs, s.MemorySize)
					}
					return nil
				})
				b.StartTimer()
			}
			s, g := toStatus/time.Duration(b.N), toGuest/time.Duration(b.N)
			b.ReportMetric(float64(s.Milliseconds()), "to-status-ms/op")
			b.ReportMetric(float64(g.Milliseconds()), "to-guest-ms/op")
			line := fmt.Sprintf("scale_%s to_status_ms=%d to_guest_ms=%d", c.name, s.Milliseconds(), g.Milliseconds())
			if raw, ok := baseline[c.guestBaseline]; ok && raw > 0 {
				line += fmt.Sprintf(" raw_qmp_ms=%d ratio=%.1f", raw, float64(g.Milliseconds())/float64(raw))
			}
			lines[i] = line
		})
	}
	appendBench(b, strings.Join(lines, " | "))
}

// guestBenchFigures reads the last line of bench/guest.txt (make bench's
// raw QMP figures) as key=milliseconds.
func guestBenchFigures() map[string]int64 {
	out := map[string]int64{}
	data, err := os.ReadFile(filepath.Join(cacheDir(), "bench", "guest.txt"))
	if err != nil {
		return out
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], "vcpu_plus1_ms=") {
			continue
		}
		for _, f := range strings.Fields(lines[i]) {
			if k, v, ok := strings.Cut(f, "="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					out[k] = n
				}
			}
		}
		break
	}
	return out
}
