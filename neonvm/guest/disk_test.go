package guest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A user's image tarball becomes a bootable disk: its files, plus /neonvm
// and the inittab, in an ext4 filesystem labelled vmroot inside a qcow2 —
// read back with debugfs, with the real mkfs.ext4 and qemu-img.
func TestBuildDiskFromImageTarball(t *testing.T) {
	for _, tool := range []string{"qemu-img", "mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			_, file, _, _ := runtime.Caller(0)
			script := filepath.Join(filepath.Dir(file), "..", "..", "hack", "qemu.sh")
			t.Logf("%s missing; installing with %s", tool, script)
			if out, err := exec.Command(script).CombinedOutput(); err != nil {
				t.Fatalf("install tools: %v\n%s", err, out)
			}
			break
		}
	}
	dir := t.TempDir()
	layer := layerTar(t, true, entry{name: "usr/", dir: true}, entry{name: "usr/hello", body: "hello from the image"})
	manifest, _ := json.Marshal([]map[string]any{{"Layers": []string{"layer.tar.gz"}}})
	var outer bytes.Buffer
	tw := tar.NewWriter(&outer)
	for name, data := range map[string][]byte{"manifest.json": manifest, "layer.tar.gz": layer} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
	}
	tw.Close()
	img := filepath.Join(dir, "image.tar")
	os.WriteFile(img, outer.Bytes(), 0o644)
	fake := filepath.Join(dir, "fake-binary")
	os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755)

	root := filepath.Join(dir, "root")
	if err := UnpackImageTarball(img, root); err != nil {
		t.Fatal(err)
	}
	if err := InstallNeonVMFiles(root, GuestBinaries{Busybox: fake, Daemon: fake, Metrics: fake, Monitor: fake}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk := filepath.Join(dir, "disk.qcow2")
	if err := BuildDisk(ctx, root, disk, "64M"); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, raw).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v %s", req, err, out)
		}
		return string(out)
	}
	if out := debugfs("cat /usr/hello"); !strings.Contains(out, "hello from the image") {
		t.Errorf("/usr/hello: %q", out)
	}
	bin := debugfs("ls /neonvm/bin")
	for _, f := range []string{"init", "busybox", "vminit", "vmshutdown", "neonvm-daemon", "guest-metrics", "vm-monitor"} {
		if !strings.Contains(bin, f) {
			t.Errorf("/neonvm/bin lacks %s: %q", f, bin)
		}
	}
	inittab := debugfs("cat /etc/inittab")
	for _, line := range []string{"::sysinit:/neonvm/bin/vminit", "::respawn:/neonvm/bin/neonvm-daemon", "::respawn:/neonvm/bin/guest-metrics", "::shutdown:/neonvm/bin/vmshutdown"} {
		if !strings.Contains(inittab, line) {
			t.Errorf("inittab lacks %q:\n%s", line, inittab)
		}
	}
	// No Postgres in this image: the monitor watches the cgroup only.
	if !strings.Contains(inittab, "::respawn:/neonvm/bin/vm-monitor --cgroup=neon-postgres --metrics-addr=127.0.0.1:9101\n") {
		t.Errorf("inittab does not start vm-monitor on the cgroup alone:\n%s", inittab)
	}
	if strings.Contains(inittab, "postgres-start") {
		t.Errorf("inittab starts Postgres in an image without it:\n%s", inittab)
	}
	label, err := exec.Command("e2label", raw).Output()
	if err != nil || strings.TrimSpace(string(label)) != "vmroot" {
		t.Errorf("filesystem label %q, %v; want vmroot", label, err)
	}
}
