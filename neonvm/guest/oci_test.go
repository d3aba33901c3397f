package guest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

type entry struct {
	name, body, link string
	dir              bool
}

func layerTar(t *testing.T, gz bool, entries ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		switch {
		case e.dir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		tw.WriteHeader(h)
		tw.Write([]byte(e.body))
	}
	tw.Close()
	if !gz {
		return buf.Bytes()
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(buf.Bytes())
	zw.Close()
	return z.Bytes()
}

// Two layers, the second deleting a file and a folder's contents from the
// first; one gzipped, one plain; a name that tries to escape.
func TestUnpackImageTarball(t *testing.T) {
	l1 := layerTar(t, true,
		entry{name: "etc/", dir: true}, entry{name: "etc/keep", body: "keep"}, entry{name: "etc/gone", body: "x"},
		entry{name: "var/cache/", dir: true}, entry{name: "var/cache/a", body: "a"},
		entry{name: "bin/sh", link: "busybox"})
	l2 := layerTar(t, false,
		entry{name: "etc/.wh.gone"}, entry{name: "var/cache/.wh..wh..opq"}, entry{name: "var/cache/b", body: "b"},
		entry{name: "../../escape", body: "no"})
	manifest, _ := json.Marshal([]map[string]any{{"Layers": []string{"l1.tar.gz", "l2.tar"}}})
	var outer bytes.Buffer
	tw := tar.NewWriter(&outer)
	for name, data := range map[string][]byte{"manifest.json": manifest, "l1.tar.gz": l1, "l2.tar": l2} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
	}
	tw.Close()
	dir := t.TempDir()
	img := filepath.Join(dir, "image.tar")
	os.WriteFile(img, outer.Bytes(), 0o644)
	root := filepath.Join(dir, "root")
	if err := UnpackImageTarball(img, root); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/keep")); string(b) != "keep" {
		t.Errorf("etc/keep = %q", b)
	}
	for _, gone := range []string{"etc/gone", "var/cache/a"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "var/cache/b")); string(b) != "b" {
		t.Errorf("var/cache/b = %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(root, "bin/sh")); l != "busybox" {
		t.Errorf("bin/sh -> %q", l)
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); err == nil {
		t.Error("a ../ name escaped the root")
	}
	if _, err := os.Stat(filepath.Join(root, "escape")); err != nil {
		t.Errorf("../../escape should land inside the root: %v", err)
	}
}

func TestUnpackRejectsNonImages(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.tar")
	os.WriteFile(p, layerTar(t, false, entry{name: "hello", body: "x"}), 0o644)
	if err := UnpackImageTarball(p, filepath.Join(dir, "r")); err == nil {
		t.Fatal("a tarball without manifest.json accepted")
	}
}
