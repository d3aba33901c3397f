package qmp

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscale/vmscale/tests/testbin"
)

// These tests drive a real QEMU (TCG, no guest: firmware only, paused with
// -S), which is enough for QMP itself: hotplug slots, virtio-mem properties,
// status and a full live migration between two QEMUs. What a guest does with
// the hardware is the runner's tests' business.

func qemuBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "hack", "qemu.sh")
	t.Logf("qemu-system-x86_64 not found; installing it with %s", script)
	out, err := exec.Command(script).Output()
	if err != nil {
		t.Fatalf("install QEMU: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// startQEMU runs QEMU with QMP on a free loopback port and returns a
// connected client.
func startQEMU(t *testing.T, extra ...string) *Client {
	t.Helper()
	port := testbin.FreePort(t)
	args := append([]string{
		"-machine", "q35", "-accel", "tcg,tb-size=32", "-cpu", "max", "-nodefaults", "-nographic", "-S",
		"-smp", "cpus=1,maxcpus=4,sockets=1,cores=4,threads=1",
		"-m", "size=256M,slots=1,maxmem=1G",
		"-object", "memory-backend-ram,id=vmem0,size=768M",
		"-device", "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=8M,requested-size=0",
		"-qmp", fmt.Sprintf("tcp:127.0.0.1:%d,server,wait=off", port),
	}, extra...)
	cmd := exec.Command(qemuBinary(t), args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("qemu output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := Dial(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
		cancel()
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
			return c
		}
		select {
		case <-exited:
			t.Fatalf("qemu exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP not up after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSetCPUsPlugsSeveralAtOnce(t *testing.T) {
	c := startQEMU(t)
	slots, err := c.QueryHotpluggableCPUs(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != 4 || PluggedCPUs(slots) != 1 {
		t.Fatalf("slots = %+v; want 4 with 1 plugged", slots)
	}
	ids, err := c.SetCPUs(ctx(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids, ",") != "cpu1,cpu2,cpu3" {
		t.Fatalf("plugged %v; want cpu1,cpu2,cpu3", ids)
	}
	slots, err = c.QueryHotpluggableCPUs(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	hot := 0
	for _, s := range slots {
		if s.Hotplugged() {
			hot++
		}
	}
	if PluggedCPUs(slots) != 4 || hot != 3 {
		t.Fatalf("after plugging: %d plugged, %d hot-plugged; want 4 and 3", PluggedCPUs(slots), hot)
	}
	// Unplugging needs a guest that took over ACPI CPU hotplug (the runner's
	// tests do it with one); before that QEMU refuses, and the refusal must
	// come back as QEMU's own error naming the vCPU, with nothing claimed.
	ids, err = c.SetCPUs(ctx(t), 2)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Command != "device_del" || !strings.Contains(err.Error(), "/machine/peripheral/cpu3") {
		t.Fatalf("unplug without a guest = %v; want QEMU's device_del error for cpu3", err)
	}
	if len(ids) != 0 {
		t.Fatalf("unplug reported %v as requested", ids)
	}
	if _, err := c.SetCPUs(ctx(t), 5); err == nil || !strings.Contains(err.Error(), "the VM has 4 slots") {
		t.Fatalf("SetCPUs(5) = %v; want an error naming the 4 slots", err)
	}
}

func TestVirtioMemAndMemorySize(t *testing.T) {
	c := startQEMU(t)
	sum, err := c.QueryMemorySizeSummary(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if sum.BaseMemory != 256<<20 || sum.Total() != 256<<20 {
		t.Fatalf("memory summary %+v; want 256 MiB base, nothing plugged", sum)
	}
	if err := c.SetVirtioMemRequestedSize(ctx(t), 512<<20); err != nil {
		t.Fatal(err)
	}
	got, err := c.VirtioMemRequestedSize(ctx(t))
	if err != nil || got != 512<<20 {
		t.Fatalf("requested-size = %d, %v; want 512 MiB", got, err)
	}
	// Without a guest driver nothing gets plugged.
	if plugged, err := c.VirtioMemPluggedSize(ctx(t)); err != nil || plugged != 0 {
		t.Fatalf("plugged size = %d, %v; want 0 without a guest", plugged, err)
	}
	err = c.SetVirtioMemRequestedSize(ctx(t), 5<<20)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Command != "qom-set" {
		t.Fatalf("a size off the block size = %v; want QEMU's own error for qom-set", err)
	}
	// A QEMU error does not break the connection.
	if _, err := c.QueryStatus(ctx(t)); err != nil {
		t.Fatalf("after a QEMU error: %v", err)
	}
}

func TestStatusAndQuit(t *testing.T) {
	c := startQEMU(t)
	st, err := c.QueryStatus(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != "prelaunch" {
		t.Fatalf("status %+v; want prelaunch (started with -S)", st)
	}
	if err := c.Execute(ctx(t), "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, err = c.QueryStatus(ctx(t)); err != nil || !st.Running {
		t.Fatalf("after cont: %+v, %v", st, err)
	}
	_ = c.Quit(ctx(t))
	if _, err := c.QueryStatus(ctx(t)); err == nil {
		t.Fatal("QMP still answers after quit")
	}
}

func TestExpiredContextClosesTheClient(t *testing.T) {
	c := startQEMU(t)
	expired, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	if _, err := c.QueryStatus(expired); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("QueryStatus with an expired context = %v", err)
	}
	if _, err := c.QueryStatus(ctx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("a later call = %v; want ErrClosed", err)
	}
}

func TestLiveMigration(t *testing.T) {
	migPort := testbin.FreePort(t)
	src := startQEMU(t)
	dst := startQEMU(t, "-incoming", fmt.Sprintf("tcp:127.0.0.1:%d", migPort))
	// The target must have the source's hot-plugged vCPUs before the stream
	// arrives.
	if _, err := src.SetCPUs(ctx(t), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.SetCPUs(ctx(t), 2); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Client{src, dst} {
		if err := c.MigrateSetCapabilities(ctx(t), MigrationCapabilities{"auto-converge": true, "xbzrle": true, "zero-blocks": false}); err != nil {
			t.Fatal(err)
		}
		if err := c.MigrateSetParameters(ctx(t), MigrationParameters{MaxBandwidth: 1 << 30, DowntimeLimitMs: 100, XBZRLECacheSize: 64 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Migrate(ctx(t), fmt.Sprintf("tcp:127.0.0.1:%d", migPort)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var info MigrationInfo
	for {
		var err error
		info, err = src.QueryMigrate(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.Status == "completed" || info.Status == "failed" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if info.Status != "completed" || info.RAM == nil || info.RAM.Transferred == 0 {
		t.Fatalf("migration ended %+v; want completed with RAM transferred", info)
	}
	slots, err := dst.QueryHotpluggableCPUs(ctx(t))
	if err != nil || PluggedCPUs(slots) != 2 {
		t.Fatalf("target vCPUs: %d, %v; want 2", PluggedCPUs(slots), err)
	}
	st, err := src.QueryStatus(ctx(t))
	if err != nil || st.Status != "postmigrate" {
		t.Fatalf("source status %+v, %v; want postmigrate", st, err)
	}
	if err := src.Migrate(ctx(t), ""); err == nil {
		t.Fatal("Migrate with no uri accepted")
	}
}
