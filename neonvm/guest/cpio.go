package guest

import (
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// File is one file of an initramfs.
type File struct {
	Path string // absolute path in the archive
	Mode uint32 // permission bits
	Data []byte
	Dir  bool
	// Link makes a symlink to this target.
	Link string
}

// WriteInitramfs writes files as a gzip-compressed newc cpio archive, the
// format the kernel unpacks into its initial root. Parent folders are added,
// entries are sorted and timestamps zero, so the same files give the same
// bytes.
func WriteInitramfs(w io.Writer, files []File) error {
	all := map[string]File{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = File{Path: d, Mode: 0o755, Dir: true}
			}
		}
		f.Path = p
		all[p] = f
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)

	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	ino := uint32(1)
	for _, n := range names {
		f := all[n]
		mode := f.Mode
		data := f.Data
		switch {
		case f.Dir:
			mode |= 0o040000
			data = nil
		case f.Link != "":
			mode = 0o120777
			data = []byte(f.Link)
		default:
			mode |= 0o100000
		}
		if err := writeEntry(zw, n, ino, mode, data); err != nil {
			return err
		}
		ino++
	}
	if err := writeEntry(zw, "TRAILER!!!", 0, 0, nil); err != nil {
		return err
	}
	return zw.Close()
}

func writeEntry(w io.Writer, name string, ino, mode uint32, data []byte) error {
	nlink := uint32(1)
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, err := w.Write(buf)
	return err
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
