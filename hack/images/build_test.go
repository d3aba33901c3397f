package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestBuildIsReproducible(t *testing.T) {
	spec := func(data string) Image {
		return Image{Name: "x", Entrypoint: []string{"/x"}, Files: []File{
			{Path: "/x", Mode: 0o755, Data: []byte(data)},
			{Path: "/tmp", Mode: 0o1777, Dir: true},
		}}
	}
	digest := func(s Image) string {
		img, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	a, b := digest(spec("binary")), digest(spec("binary"))
	if a != b {
		t.Fatalf("same inputs, different digests: %s %s", a, b)
	}
	if c := digest(spec("other binary")); c == a {
		t.Fatalf("different inputs, same digest %s", a)
	}
}

func TestLayerTarIsSortedWithParents(t *testing.T) {
	data, err := LayerTar([]File{
		{Path: "/usr/bin/b", Mode: 0o755, Data: []byte("b")},
		{Path: "/a", Mode: 0o644, Data: []byte("a")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if !h.ModTime.Equal(epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d; want fixed", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		names = append(names, h.Name)
	}
	want := []string{"a", "usr/", "usr/bin/", "usr/bin/b"}
	if len(names) != len(want) {
		t.Fatalf("entries %v; want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %v; want %v", names, want)
		}
	}
}

func TestDiscoverSkipsMarkedBinaries(t *testing.T) {
	root := t.TempDir()
	write := func(dir, src string) {
		p := filepath.Join(root, "cmd", dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if src != "" {
			if err := os.WriteFile(filepath.Join(p, "main.go"), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("b-pod", "package main\n")
	write("a-pod", "package main\n")
	write("in-guest", "// Runs in the guest.\n// "+NoImageMarker+"\npackage main\n")
	write("no-main", "")
	got, err := Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Binary{"a-pod", "./cmd/a-pod"}) || got[1] != (Binary{"b-pod", "./cmd/b-pod"}) {
		t.Fatalf("Discover = %v; want a-pod and b-pod", got)
	}
}
