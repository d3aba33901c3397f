package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qmp"
)

// The floors end-to-end scaling latency is compared with: boot to Postgres,
// and from the QMP call to the guest itself seeing +1 vCPU, +256 MiB and
// -256 MiB. Run with `make bench`; the figures also go to
// $VMSCALE_BENCH_OUT (default: the cache's bench/guest.txt).

func benchOut(b *testing.B, line string) {
	path := os.Getenv("VMSCALE_BENCH_OUT")
	if path == "" {
		cache := os.Getenv("VMSCALE_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "vmscale")
		}
		path = filepath.Join(cache, "bench", "guest.txt")
	}
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
}

// pollFast polls every 10 ms: the figure must measure the guest, not the
// poll interval.
func pollFast(b testing.TB, timeout time.Duration, cond func() bool) time.Duration {
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			b.Fatalf("not done after %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func BenchmarkBootToPostgres(b *testing.B) {
	guestImage(b)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		vm := bootVM(b, vmv1.CPUs{Min: 1000, Max: 2000, Use: 1000}, vmv1.MemorySlots{Min: 2, Max: 4, Use: 2})
		vm.waitPostgres(b)
		total += time.Since(start)
		_ = vm.cmd.Process.Kill()
		<-vm.exited
	}
	ms := float64(total.Milliseconds()) / float64(b.N)
	b.ReportMetric(ms, "ms-to-postgres/op")
	benchOut(b, fmt.Sprintf("boot_to_postgres_ms=%.0f n=%d", ms, b.N))
}

// BenchmarkHotplugSeenByGuest measures, per iteration on a fresh guest,
// +1 vCPU and -1 vCPU (QEMU 7.2 under TCG cannot plug again after an unplug:
// see neonvm/qemu), then +256 MiB and -256 MiB of virtio-mem.
func BenchmarkHotplugSeenByGuest(b *testing.B) {
	var cpuUp, cpuDown, memUp, memDown time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		vm := bootVM(b, vmv1.CPUs{Min: 1000, Max: 2000, Use: 1000}, vmv1.MemorySlots{Min: 2, Max: 4, Use: 2})
		vm.waitPostgres(b)
		base := vm.memTotalMiB(b)
		b.StartTimer()

		if _, err := vm.QMP.SetCPUs(qctx(b), 2); err != nil {
			b.Fatal(err)
		}
		cpuUp += pollFast(b, time.Minute, func() bool { return vm.onlineCPUs(b) == "0-1" })
		if _, err := vm.QMP.SetCPUs(qctx(b), 1); err != nil {
			b.Fatal(err)
		}
		cpuDown += pollFast(b, time.Minute, func() bool {
			slots, err := vm.QMP.QueryHotpluggableCPUs(qctx(b))
			return err == nil && qmp.PluggedCPUs(slots) == 1 && vm.onlineCPUs(b) == "0"
		})

		if err := vm.QMP.SetVirtioMemRequestedSize(qctx(b), 256<<20); err != nil {
			b.Fatal(err)
		}
		memUp += pollFast(b, time.Minute, func() bool { return vm.memTotalMiB(b) >= base+200 })
		if err := vm.QMP.SetVirtioMemRequestedSize(qctx(b), 0); err != nil {
			b.Fatal(err)
		}
		memDown += pollFast(b, time.Minute, func() bool { return vm.memTotalMiB(b) <= base+50 })

		b.StopTimer()
		_ = vm.cmd.Process.Kill()
		<-vm.exited
		b.StartTimer()
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) / n }
	b.ReportMetric(ms(cpuUp), "ms-vcpu+1/op")
	b.ReportMetric(ms(cpuDown), "ms-vcpu-1/op")
	b.ReportMetric(ms(memUp), "ms-mem+256Mi/op")
	b.ReportMetric(ms(memDown), "ms-mem-256Mi/op")
	benchOut(b, fmt.Sprintf("vcpu_plus1_ms=%.0f vcpu_minus1_ms=%.0f mem_plus256Mi_ms=%.0f mem_minus256Mi_ms=%.0f n=%d (TCG)",
		ms(cpuUp), ms(cpuDown), ms(memUp), ms(memDown), b.N))
}
