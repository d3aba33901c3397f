package files

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestChecksumIsOrderFreeAndSensitive(t *testing.T) {
	a := Checksum(map[string][]byte{"a": []byte("1"), "b": []byte("2")})
	if a != Checksum(map[string][]byte{"b": []byte("2"), "a": []byte("1")}) {
		t.Error("the checksum depends on map order")
	}
	for name, other := range map[string]map[string][]byte{
		"content":  {"a": []byte("1"), "b": []byte("3")},
		"name":     {"a": []byte("1"), "c": []byte("2")},
		"boundary": {"a": []byte("12"), "b": []byte("")},
		"missing":  {"a": []byte("1")},
	} {
		if Checksum(other) == a {
			t.Errorf("%s change not seen", name)
		}
	}
	// Known answer, computed independently (Python's hashlib.blake2b with
	// digest_size=32 over the same framing).
	if got := Checksum(map[string][]byte{"user": []byte("alice"), "password": []byte("s3cret")}); got != "k2cBjETjWW7gWC/wL5vdJ4tNLrFQH8AUYrUfMFcpgok" {
		t.Errorf("checksum = %q", got)
	}
	if Checksum(nil) == "" {
		t.Error("the empty set has a checksum too")
	}
}

func TestWriteIsKubeletLayoutAndReplaces(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Unix(1000, 0)
	if err := Write(dir, map[string][]byte{"user": []byte("alice"), "password": []byte("s3cret")}, t0); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir)
	if err != nil || string(got["user"]) != "alice" || string(got["password"]) != "s3cret" || len(got) != 2 {
		t.Fatalf("read back %v (%v)", got, err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "password")); err != nil || string(data) != "s3cret" {
		t.Fatalf("visible link: %q %v", data, err)
	}
	if err := Write(dir, map[string][]byte{"password": []byte("n3w")}, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ = Read(dir)
	if len(got) != 1 || string(got["password"]) != "n3w" {
		t.Fatalf("after update: %v", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "user")); !os.IsNotExist(err) {
		t.Errorf("the removed file's link is still there: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	hidden := 0
	for _, e := range entries {
		if e.IsDir() {
			hidden++
		}
	}
	if hidden != 1 {
		t.Errorf("%d content folders left, want 1", hidden)
	}
	if Checksum(got) != Checksum(map[string][]byte{"password": []byte("n3w")}) {
		t.Error("checksum of what was written differs")
	}
}

func TestReadKubeletVolume(t *testing.T) {
	// A folder as the kubelet lays a secret volume out.
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "..2026_01_01"), 0o755)
	os.WriteFile(filepath.Join(dir, "..2026_01_01", "key"), []byte("v"), 0o644)
	os.Symlink("..2026_01_01", filepath.Join(dir, "..data"))
	os.Symlink("..data/key", filepath.Join(dir, "key"))
	got, err := Read(dir)
	if err != nil || len(got) != 1 || string(got["key"]) != "v" {
		t.Fatalf("%v %v", got, err)
	}
}

func TestWriteRejectsBadNames(t *testing.T) {
	for _, n := range []string{"", "..data", "a/b", "..x", "."} {
		if err := Write(t.TempDir(), map[string][]byte{n: nil}, time.Now()); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
}
