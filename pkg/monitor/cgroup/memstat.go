// Package cgroup watches the memory of the cgroup v2 group Postgres runs in
// (neon-postgres) for the vm-monitor: it reads memory.stat every 100 ms and
// feeds package pressure, whose decisions to ask for an upscale come out of
// Watcher.Requests. It never writes memory.high or memory.max.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
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
// memory.stat, and zeros would look like an idle cgroup. It allocates
// nothing: it runs ten times a second.
func ParseMemoryStat(data []byte) (MemoryStat, error) {
	var m MemoryStat
	found := 0
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte("\n"))
		key, value, ok := bytes.Cut(line, []byte(" "))
		var dst *uint64
		var bit int
		switch string(key) { // no allocation: the compiler compares in place
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
		n, err := parseUint(bytes.TrimSpace(value))
		if err != nil {
			return m, fmt.Errorf("memory.stat: %s: %w", key, err)
		}
		*dst = n
		found |= bit
	}
	if found != 3 {
		return m, errors.New("memory.stat: active_anon or inactive_anon missing")
	}
	return m, nil
}

var errNotNumber = errors.New("not an unsigned decimal number")

func parseUint(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > 20 {
		return 0, errNotNumber
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errNotNumber
		}
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, errNotNumber
		}
		n = n*10 + d
	}
	return n, nil
}

// Reader reads one cgroup's memory.stat. It keeps the file open and
// re-reads it from offset 0 (the kernel regenerates it on each read from
// the start), reopening after an error.
type Reader struct {
	dir string
	f   *os.File
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
	r := &Reader{dir: filepath.Join(mountpoint, name), buf: make([]byte, 8192)}
	if _, err := r.Read(); err != nil {
		return nil, err
	}
	return r, nil
}

// Read takes one sample of memory.stat.
func (r *Reader) Read() (MemoryStat, error) {
	if r.f == nil {
		f, err := os.Open(filepath.Join(r.dir, "memory.stat"))
		if err != nil {
			return MemoryStat{}, fmt.Errorf("read memory.stat: %w", err)
		}
		r.f = f
	}
	for {
		n, err := r.f.ReadAt(r.buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			r.Close()
			return MemoryStat{}, fmt.Errorf("read %s/memory.stat: %w", r.dir, err)
		}
		if n == len(r.buf) { // maybe cut short: read again with more room
			r.buf = make([]byte, 2*len(r.buf))
			continue
		}
		m, err := ParseMemoryStat(r.buf[:n])
		if err != nil {
			r.Close() // the file may have been replaced: reopen next time
			return m, fmt.Errorf("%s: %w", r.dir, err)
		}
		return m, nil
	}
}

// Close closes the file; the next Read opens it again.
func (r *Reader) Close() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

// Dir is the cgroup's folder.
func (r *Reader) Dir() string { return r.dir }
