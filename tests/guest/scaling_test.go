package guest

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

const bootTimeout = 3 * time.Minute

// waitPostgres waits until Postgres in the guest accepts connections.
func (vm *VM) waitPostgres(t testing.TB) {
	t.Helper()
	poll(t, bootTimeout, "Postgres accepting connections", func() error {
		_, err := vm.run(t, "/usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1")
		return err
	})
}

func (vm *VM) onlineCPUs(t testing.TB) string {
	out, err := vm.run(t, "cat /sys/devices/system/cpu/online")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func (vm *VM) memTotalMiB(t testing.TB) int64 {
	out, err := vm.run(t, "grep MemTotal /proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	kb, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("MemTotal line %q", out)
	}
	return kb / 1024
}

// Boot to Postgres, then vCPUs 1 -> 4 -> 2 and memory 512 MiB -> 2 GiB ->
// 1 GiB over QMP, each time read back from inside the guest.
func TestGuestScalesLive(t *testing.T) {
	vm := bootVM(t, vmv1.CPUs{Min: 1000, Max: 4000, Use: 1000}, vmv1.MemorySlots{Min: 2, Max: 8, Use: 2})
	start := time.Now()
	vm.waitPostgres(t)
	t.Logf("Postgres ready %s after QEMU start", time.Since(start).Round(100*time.Millisecond))
	if got := vm.onlineCPUs(t); got != "0" {
		t.Fatalf("online CPUs at boot = %q; want 0", got)
	}
	base := vm.memTotalMiB(t)

	for _, step := range []struct {
		cpus int
		want string
	}{{4, "0-3"}, {2, "0-1"}} {
		if _, err := vm.QMP.SetCPUs(qctx(t), step.cpus); err != nil {
			t.Fatal(err)
		}
		poll(t, time.Minute, fmt.Sprintf("guest sees %d vCPUs", step.cpus), func() error {
			if got := vm.onlineCPUs(t); got != step.want {
				return fmt.Errorf("online %q, want %q", got, step.want)
			}
			return nil
		})
	}

	for _, step := range []struct{ slots int64 }{{8}, {4}} {
		extra := (step.slots - 2) * 256 << 20
		if err := vm.QMP.SetVirtioMemRequestedSize(qctx(t), extra); err != nil {
			t.Fatal(err)
		}
		poll(t, 2*time.Minute, fmt.Sprintf("guest MemTotal at %d slots", step.slots), func() error {
			plugged, err := vm.QMP.VirtioMemPluggedSize(qctx(t))
			if err != nil {
				return err
			}
			if plugged != extra {
				return fmt.Errorf("virtio-mem plugged %d MiB, want %d MiB", plugged>>20, extra>>20)
			}
			got := vm.memTotalMiB(t)
			if want := base + extra>>20; got < want-64 || got > want+64 {
				return fmt.Errorf("MemTotal %d MiB, want about %d MiB", got, want)
			}
			// The exporter the agent scrapes follows what the guest sees.
			exported, err := vm.scrape("host_memory_total_bytes")
			if err != nil {
				return err
			}
			if int64(exported)>>20 != got {
				return fmt.Errorf("exporter says %d MiB, the guest %d MiB", int64(exported)>>20, got)
			}
			return nil
		})
	}
	sum, err := vm.QMP.QueryMemorySizeSummary(qctx(t))
	if err != nil || sum.Total() != 4*256<<20 {
		t.Fatalf("memory summary %+v, %v; want 1 GiB in all", sum, err)
	}
	// The memory that was unplugged is gone for good: nothing is left
	// plugged beyond the request.
	if req, _ := vm.QMP.VirtioMemRequestedSize(qctx(t)); req != 2*256<<20 {
		t.Fatalf("requested size %d", req)
	}
}

// system_powerdown -> the guest shuts Postgres down and powers off; QEMU
// (-no-reboot) exits.
func TestGuestPowersOffOnACPI(t *testing.T) {
	vm := bootVM(t, vmv1.CPUs{Min: 1000, Max: 1000, Use: 1000}, vmv1.MemorySlots{Min: 2, Max: 2, Use: 2})
	vm.waitPostgres(t)
	if err := vm.QMP.SystemPowerdown(qctx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.exited:
	case <-time.After(2 * time.Minute):
		t.Fatal("QEMU still running 2 minutes after system_powerdown")
	}
	// vmshutdown stopped Postgres cleanly before the power went off.
	if !strings.Contains(vm.console(), "server stopped") {
		t.Fatalf("the guest powered off without stopping Postgres cleanly")
	}
}

// scrape reads one gauge from the guest's metrics exporter on :9100.
func (vm *VM) scrape(name string) (float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", vm.Metrics))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("%s not exported:\n%s", name, body)
}
