// Package diskinit puts a root-disk image's disk where the runner opens it
// (the runner pod's init container, cmd/neonvm-disk-init).
package diskinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Options say what to move where, and to whom.
type Options struct {
	Src, Dst string
	// Owner is "uid:gid"; empty leaves the owner alone.
	Owner string
	// IPForward writes 1 to ProcSys/net/ipv4/ip_forward.
	IPForward bool
	// ProcSys is /proc/sys unless a test says otherwise.
	ProcSys string
}

// Run moves Src to Dst (renaming when both are on one filesystem, copying
// otherwise, keeping holes), sets the owner, and turns on forwarding. It
// returns the disk's size. Dst appears whole or not at all.
func Run(o Options) (int64, error) {
	uid, gid := -1, -1
	if o.Owner != "" {
		u, g, ok := strings.Cut(o.Owner, ":")
		var err1, err2 error
		uid, err1 = strconv.Atoi(u)
		gid, err2 = strconv.Atoi(g)
		if !ok || err1 != nil || err2 != nil || uid < 0 || gid < 0 {
			return 0, fmt.Errorf("-owner %q is not uid:gid", o.Owner)
		}
	}
	fi, err := os.Stat(o.Src)
	if err != nil {
		return 0, fmt.Errorf("the root disk: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Dst), 0o755); err != nil {
		return 0, err
	}
	tmp := o.Dst + ".partial"
	if err := os.Rename(o.Src, tmp); err != nil {
		var le *os.LinkError
		if !errors.As(err, &le) || !errors.Is(le.Err, syscall.EXDEV) {
			return 0, fmt.Errorf("move %s: %w", o.Src, err)
		}
		if err := copySparse(o.Src, tmp); err != nil {
			os.Remove(tmp)
			return 0, fmt.Errorf("copy %s to %s: %w", o.Src, tmp, err)
		}
	}
	if uid >= 0 {
		if err := os.Chown(tmp, uid, gid); err != nil {
			return 0, fmt.Errorf("give %s to %s: %w", tmp, o.Owner, err)
		}
	}
	if err := os.Rename(tmp, o.Dst); err != nil {
		return 0, err
	}
	if o.IPForward {
		ps := o.ProcSys
		if ps == "" {
			ps = "/proc/sys"
		}
		if err := os.WriteFile(filepath.Join(ps, "net/ipv4/ip_forward"), []byte("1\n"), 0o644); err != nil {
			return 0, fmt.Errorf("net.ipv4.ip_forward=1 (the init container must be privileged): %w", err)
		}
	}
	return fi.Size(), nil
}

// copySparse copies src to dst, skipping runs of zeros so that an image's
// holes stay holes.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var size int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			chunk := buf[:n]
			if allZero(chunk) {
				if _, err := out.Seek(int64(n), io.SeekCurrent); err != nil {
					out.Close()
					return err
				}
			} else if _, err := out.Write(chunk); err != nil {
				out.Close()
				return err
			}
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
