// Package files keeps a watched ConfigMap/Secret disk's contents in sync
// between the runner pod and the guest (docs/neonvm.md#guest-and-neonvm-daemon). Both sides use
// the kubelet's atomic layout: the files live in a hidden folder that the
// symlink `..data` names, and each visible name links into `..data`, so a
// reader never sees half an update.
package files

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/blake2b"
)

// DataLink is the symlink naming the current contents.
const DataLink = "..data"

// File is one file on the wire: {"data": <base64>}.
type File struct {
	Data []byte `json:"data"`
}

// Checksum identifies a set of files: BLAKE2b-256 over the files sorted by
// name, each hashed as its name, a zero byte, its length as a
// little-endian uint64 and its contents; unpadded standard base64.
func Checksum(files map[string][]byte) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	h, _ := blake2b.New256(nil)
	var n [8]byte
	for _, name := range names {
		h.Write([]byte(name))
		h.Write([]byte{0})
		binary.LittleEndian.PutUint64(n[:], uint64(len(files[name])))
		h.Write(n[:])
		h.Write(files[name])
	}
	return base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}

// Read returns the files of dir's current contents (dir/..data, or dir
// itself when it has no such link): regular files only, by name.
func Read(dir string) (map[string][]byte, error) {
	src := filepath.Join(dir, DataLink)
	if _, err := os.Stat(src); err != nil {
		src = dir
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") || !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return nil, err
		}
		out[e.Name()] = data
	}
	return out, nil
}

// ValidName says whether name may be a file of a watched disk: one path
// element, not hidden by the layout's `..` prefix.
func ValidName(name string) error {
	if name == "" || name == "." || strings.HasPrefix(name, "..") || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("file name %q: want one path element not starting with \"..\"", name)
	}
	return nil
}

// Write replaces dir's contents with files atomically, the kubelet's way:
// a new hidden folder, `..data` switched to it by rename, a link per file,
// then the old folder and the links of removed files go. dir must exist.
func Write(dir string, files map[string][]byte, now time.Time) error {
	for name := range files {
		if err := ValidName(name); err != nil {
			return err
		}
	}
	stamp := ".." + now.UTC().Format("2006_01_02_15_04_05.000000000")
	next := filepath.Join(dir, stamp)
	if err := os.Mkdir(next, 0o755); err != nil {
		return fmt.Errorf("new contents folder: %w", err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(next, name), data, 0o644); err != nil {
			return err
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, DataLink))
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(stamp, tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, DataLink)); err != nil {
		return fmt.Errorf("switch %s: %w", DataLink, err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join(DataLink, name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join(DataLink, name), link); err != nil {
			return err
		}
	}
	// Links of files that are gone, and the previous contents.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			continue
		}
		if _, ok := files[n]; !ok && e.Type()&os.ModeSymlink != 0 {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	if old != "" && old != stamp && strings.HasPrefix(old, "..") {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}
