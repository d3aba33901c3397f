package guest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qmp"
	"github.com/vmscale/vmscale/tests/testbin"
)

// A live migration between two QEMUs on this machine, set up as the
// controller sets one up (capabilities, parameters, incremental disk copy),
// while the guest writes to its memory and to its root disk: the guest on
// the target is the same boot (boot id), with the same memory (a checksum
// of a tmpfs file) and the same disk (Postgres's rows), and keeps running.
func TestLiveMigrationKeepsTheGuest(t *testing.T) {
	cpus := vmv1.CPUs{Min: 1000, Max: 1000, Use: 1000}
	slots := vmv1.MemorySlots{Min: 2, Max: 2, Use: 2}
	src := bootVMWith(t, cpus, slots, "")
	src.waitPostgres(t)
	bootID := src.mustRun(t, "cat /proc/sys/kernel/random/boot_id")
	src.mustRun(t, "dd if=/dev/urandom of=/dev/shm/before bs=1M count=48 2>/dev/null")
	sum := src.mustRun(t, "md5sum /dev/shm/before")
	src.mustRun(t, "runuser -u postgres -- /usr/lib/postgresql/15/bin/pgbench -q -i -s 1 -h 127.0.0.1 -U postgres postgres >/dev/null 2>&1")
	// Writers that keep going through the migration: memory and disk.
	src.mustRun(t, "setsid sh -c 'while :; do dd if=/dev/urandom of=/dev/shm/churn bs=1M count=8 2>/dev/null; sleep 0.5; done' </dev/null >/dev/null 2>&1 &")
	src.mustRun(t, "setsid runuser -u postgres -- /usr/lib/postgresql/15/bin/pgbench -T 600 -c 1 -R 20 -h 127.0.0.1 -U postgres postgres </dev/null >/dev/null 2>&1 &")

	port := testbin.FreePort(t)
	dst := bootVMWith(t, cpus, slots, "tcp:127.0.0.1:"+strconv.Itoa(port))
	caps := qmp.MigrationCapabilities{"xbzrle": true, "auto-converge": true, "zero-blocks": true, "postcopy-ram": false}
	params := qmp.MigrationParameters{MaxBandwidth: 1 << 30, DowntimeLimitMs: 200, XBZRLECacheSize: 256 << 20}
	for _, vm := range []*VM{dst, src} {
		if err := vm.QMP.MigrateSetCapabilities(qctx(t), caps); err != nil {
			t.Fatal(err)
		}
		if err := vm.QMP.MigrateSetParameters(qctx(t), params); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.QMP.MigrateWithDisks(qctx(t), "tcp:127.0.0.1:"+strconv.Itoa(port), true); err != nil {
		t.Fatal(err)
	}
	var info qmp.MigrationInfo
	poll(t, 3*time.Minute, "migration completed", func() error {
		var err error
		if info, err = src.QMP.QueryMigrate(qctx(t)); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			t.Fatalf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		return fmt.Errorf("status %s", info.Status)
	})
	t.Logf("migrated in %d ms, downtime %d ms", info.TotalTimeMs, info.DowntimeMs)
	_ = src.QMP.Quit(qctx(t))

	poll(t, time.Minute, "target running", func() error {
		st, err := dst.QMP.QueryStatus(qctx(t))
		if err != nil {
			return err
		}
		if st.Status != "running" {
			return fmt.Errorf("status %s", st.Status)
		}
		return nil
	})
	if got := dst.mustRun(t, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Fatalf("boot id %q after the migration, %q before: the guest rebooted", got, bootID)
	}
	if got := dst.mustRun(t, "md5sum /dev/shm/before"); got != sum {
		t.Fatalf("tmpfs file checksum %q after the migration, %q before", got, sum)
	}
	// The guest keeps working on the target: its writers run on, Postgres
	// reads and writes the rows the source wrote.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		out := dst.mustRun(t, "runuser -u postgres -- psql -h 127.0.0.1 -U postgres -Atc 'checkpoint' postgres && runuser -u postgres -- psql -h 127.0.0.1 -U postgres -Atc 'select count(*) from pgbench_accounts' postgres")
		if lines := strings.Split(out, "\n"); lines[len(lines)-1] != "100000" {
			t.Fatalf("pgbench_accounts has %q rows on the target, want 100000", out)
		}
		select {
		case <-dst.exited:
			t.Fatalf("target QEMU exited after the migration:\n%s", dst.console())
		case <-time.After(2 * time.Second):
		}
	}
	if got := dst.mustRun(t, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Fatalf("boot id changed on the target: the guest rebooted")
	}
}

func (vm *VM) mustRun(t testing.TB, command string) string {
	t.Helper()
	out, err := vm.run(t, command)
	if err != nil {
		t.Fatalf("in the guest: %v\nconsole:\n%s", err, vm.console())
	}
	return strings.TrimSpace(out)
}
