package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// DefaultMountpoint is where cgroup v2 is mounted in the guest.
const DefaultMountpoint = "/sys/fs/cgroup"

// MemoryStat is what the watcher reads from memory.stat.
type MemoryStat struct {
	ActiveAnon, InactiveAnon uint64 // bytes
}

// NonReclaimable is the memory the kernel cannot take back without swap.
func (m MemoryStat) NonReclaimable() uint64 { return m.ActiveAnon + m.InactiveAnon }

// ParseMemoryStat reads the anonymous-memory lines of a cgroup v2
// memory.stat. Both must be present: a file without them is not a cgroup v2
// memory.stat, and zeros would look like an idle cgroup.
func ParseMemoryStat(r io.Reader) (MemoryStat, error) {
	var m MemoryStat
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), " ")
		var dst *uint64
		var bit int
		switch key {
		case "active_anon":
			dst, bit = &m.ActiveAnon, 1
		case "inactive_anon":
			dst, bit = &m.InactiveAnon, 2
		default:
			continue
		}
		if !ok {
			return m, fmt.Errorf("memory.stat: %s has no value", key)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
		if err != nil {
			return m, fmt.Errorf("memory.stat: %s: %w", key, err)
		}
		*dst = n
		found |= bit
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("memory.stat: %w", err)
	}
	if found != 3 {
		return m, errors.New("memory.stat: active_anon or inactive_anon missing")
	}
	return m, nil
}

// Reader reads one cgroup's memory.stat.
type Reader struct {
	dir string
	buf []byte
}

// Open checks that group (e.g. "neon-postgres") is a cgroup v2 group with
// the memory controller under mountpoint and returns a reader for it. At the
// default mountpoint the host must run the unified (v2) hierarchy; another
// mountpoint is taken as given (tests use a folder laid out like one).
func Open(mountpoint, group string) (*Reader, error) {
	if mountpoint == DefaultMountpoint && cgroups.Mode() != cgroups.Unified {
		return nil, fmt.Errorf("open cgroup %s: %s is not a cgroup v2 (unified) hierarchy", group, mountpoint)
	}
	name := "/" + strings.Trim(group, "/")
	mgr, err := cgroup2.Load(name, cgroup2.WithMountpoint(mountpoint))
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", group, err)
	}
	controllers, err := mgr.Controllers()
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: read its controllers: %w", group, err)
	}
	if !slices.Contains(controllers, "memory") {
		return nil, fmt.Errorf("open cgroup %s: the memory controller is not enabled (controllers: %v)", group, controllers)
	}
	r := &Reader{dir: filepath.Join(mountpoint, name), buf: make([]byte, 0, 4096)}
	if _, err := r.Read(); err != nil {
		return nil, err
	}
	return r, nil
}

// Read takes one sample of memory.stat. It reads the file whole into a
// reused buffer: the file is small and read ten times a second, and the
// library's full Stat() would read every controller's files each time.
func (r *Reader) Read() (MemoryStat, error) {
	f, err := os.Open(filepath.Join(r.dir, "memory.stat"))
	if err != nil {
		return MemoryStat{}, fmt.Errorf("read memory.stat: %w", err)
	}
	defer f.Close()
	buf := bytes.NewBuffer(r.buf[:0])
	if _, err := buf.ReadFrom(f); err != nil {
		return MemoryStat{}, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	r.buf = buf.Bytes()
	m, err := ParseMemoryStat(bytes.NewReader(r.buf))
	if err != nil {
		return m, fmt.Errorf("%s: %w", r.dir, err)
	}
	return m, nil
}

// Dir is the cgroup's folder.
func (r *Reader) Dir() string { return r.dir }
