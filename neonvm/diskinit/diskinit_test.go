package diskinit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRunMovesOwnsAndForwards(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.qcow2")
	data := append(bytes.Repeat([]byte{0}, 3<<20), []byte("tail")...)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	procSys := filepath.Join(dir, "proc")
	if err := os.MkdirAll(filepath.Join(procSys, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "images", "rootdisk.qcow2")
	n, err := Run(Options{Src: src, Dst: dst, Owner: "36:36", IPForward: true, ProcSys: procSys})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) {
		t.Errorf("size %d, want %d", n, len(data))
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("destination differs (%v)", err)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Errorf("the source is still there: %v", err)
	}
	fi, _ := os.Stat(dst)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 36 || st.Gid != 36 {
		t.Errorf("owner %d:%d, want 36:36", st.Uid, st.Gid)
	}
	fwd, _ := os.ReadFile(filepath.Join(procSys, "net/ipv4/ip_forward"))
	if strings.TrimSpace(string(fwd)) != "1" {
		t.Errorf("ip_forward = %q", fwd)
	}
}

func TestCopySparseKeepsContentAndHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	data := append(append([]byte("head"), bytes.Repeat([]byte{0}, 8<<20)...), []byte("tail")...)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, data) {
		t.Fatal("copy differs from the source")
	}
}

func TestRunRejectsBadOwnerAndMissingDisk(t *testing.T) {
	dir := t.TempDir()
	if _, err := Run(Options{Src: filepath.Join(dir, "none"), Dst: filepath.Join(dir, "x")}); err == nil || !strings.Contains(err.Error(), "root disk") {
		t.Errorf("missing disk: %v", err)
	}
	if _, err := Run(Options{Src: "x", Dst: "y", Owner: "qemu"}); err == nil || !strings.Contains(err.Error(), "uid:gid") {
		t.Errorf("bad owner: %v", err)
	}
}
