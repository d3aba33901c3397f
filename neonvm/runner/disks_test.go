package runner

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/vmscale/vmscale/neonvm/qemu"
)

// backingFile is qemu-img's view of path's backing file ("" for none).
func backingFile(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", "-U", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		BackingFilename string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info.BackingFilename
}

// In a pod the init container's image becomes the read-only base of an
// overlay the guest writes to; a restarted runner keeps that overlay.
func TestRootOverlayInAPod(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img (apt-get install qemu-utils): the runner image has it")
	}
	ctx := context.Background()
	images := t.TempDir()
	root := filepath.Join(images, "rootdisk.qcow2")
	if err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", root, "64M"); err != nil {
		t.Fatal(err)
	}
	d := Dirs{Images: images, BaseRootDisk: root}
	got, err := rootOverlay(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(images, RootDiskBaseName)
	if got != root || backingFile(t, root) != base {
		t.Fatalf("root disk %s backed by %q; want %s backed by %s", got, backingFile(t, root), root, base)
	}
	if backingFile(t, base) != "" {
		t.Fatalf("the image itself got a backing file: %s", backingFile(t, base))
	}

	// The runner container restarts in the same pod: the guest's writes
	// (the overlay) are kept.
	if err := os.WriteFile(root+".marker", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(root)
	if _, err := rootOverlay(ctx, d); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(root)
	if !os.SameFile(before, after) || backingFile(t, root) != base {
		t.Fatalf("a restarted runner replaced the guest's overlay")
	}

	// Neither the image nor an overlay: the error names the root disk.
	empty := t.TempDir()
	if _, err := rootOverlay(ctx, Dirs{Images: empty, BaseRootDisk: filepath.Join(empty, "rootdisk.qcow2")}); err == nil {
		t.Fatal("no root disk image, no error")
	}
}

// A local runner is given a shared image: it gets a fresh overlay each
// start, and the image is never written.
func TestRootOverlayOnASharedImage(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img (apt-get install qemu-utils): the runner image has it")
	}
	ctx := context.Background()
	shared := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", shared, "64M"); err != nil {
		t.Fatal(err)
	}
	images := t.TempDir()
	got, err := rootOverlay(ctx, Dirs{Images: images, BaseRootDisk: shared})
	if err != nil {
		t.Fatal(err)
	}
	if got != filepath.Join(images, "rootdisk.qcow2") || backingFile(t, got) != shared {
		t.Fatalf("root disk %s backed by %q; want an overlay on %s", got, backingFile(t, got), shared)
	}
	if _, err := os.Stat(filepath.Join(images, RootDiskBaseName)); err == nil {
		t.Fatal("a shared image was moved")
	}
}

// QEMU reopens writable disks after dropping to its user: they are its.
func TestChownDisksGivesWritableDisksToQEMU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	dir := t.TempDir()
	for _, name := range []string{"rootdisk.qcow2", RootDiskBaseName, "data.qcow2", "runtime.iso"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disks := []qemu.Disk{{ID: "data", Path: filepath.Join(dir, "data.qcow2")}, {ID: "runtime", Path: filepath.Join(dir, "runtime.iso"), CDROM: true}}
	if err := chownDisks("nobody", filepath.Join(dir, "rootdisk.qcow2"), disks); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"rootdisk.qcow2": u.Uid, RootDiskBaseName: u.Uid, "data.qcow2": u.Uid, "runtime.iso": "0"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); got != want {
			t.Errorf("%s owned by uid %s, want %s", name, got, want)
		}
	}
	if err := chownDisks("no-such-user-here", filepath.Join(dir, "rootdisk.qcow2"), nil); err == nil {
		t.Error("an unknown user, no error")
	}
}
