package guest

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qmp"
	"github.com/vmscale/vmscale/tests/testbin"
)

func TestZZIdleMigration(t *testing.T) {
	cpus := vmv1.CPUs{Min: 1000, Max: 1000, Use: 1000}
	slots := vmv1.MemorySlots{Min: 2, Max: 2, Use: 2}
	src := bootVMWith(t, cpus, slots, "")
	src.waitPostgres(t)
	time.Sleep(5 * time.Second)
	port := testbin.FreePort(t)
	dst := bootVMWith(t, cpus, slots, "tcp:127.0.0.1:"+strconv.Itoa(port))
	caps := qmp.MigrationCapabilities{"xbzrle": os.Getenv("XNOX") == "", "auto-converge": os.Getenv("XNOAC") == "", "zero-blocks": true, "postcopy-ram": false}
	params := qmp.MigrationParameters{MaxBandwidth: 1 << 30, DowntimeLimitMs: 100, XBZRLECacheSize: 256 << 20}
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
	poll(t, 3*time.Minute, "migration completed", func() error {
		info, err := src.QMP.QueryMigrate(qctx(t))
		if err != nil {
			return err
		}
		if info.Status == "completed" {
			return nil
		}
		if info.Status == "failed" {
			t.Fatal(info.ErrorDesc)
		}
		return fmt.Errorf("status %s", info.Status)
	})
	_ = src.QMP.Quit(qctx(t))
	select {
	case <-dst.exited:
		t.Fatalf("target exited:\n%s", dst.console())
	case <-time.After(20 * time.Second):
	}
	if _, err := dst.run(t, "true"); err != nil {
		t.Fatalf("exec: %v\n%s", err, dst.console())
	}
}
