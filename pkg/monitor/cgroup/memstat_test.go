package cgroup

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/vmscale/vmscale/pkg/monitor/pressure"
	"github.com/vmscale/vmscale/tests/poll"
)

// testdata/memory.stat has the layout of a cgroup v2 memory.stat from
// Debian's 6.1 kernel (the guest's): every key, in the kernel's order. The
// real file is read in the guest test (tests/guest); the host has no cgroup
// v2 memory controller.
func TestParseMemoryStat(t *testing.T) {
	data, err := os.ReadFile("testdata/memory.stat")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMemoryStat(data)
	if err != nil {
		t.Fatal(err)
	}
	if m.ActiveAnon != 4464640 || m.InactiveAnon != 77873152 || m.NonReclaimable() != 82337792 {
		t.Errorf("parsed %+v", m)
	}
	for _, bad := range []string{
		"", "anon 1\nfile 2\n", "active_anon 1\n", "inactive_anon 1\nactive_anon x\n", "active_anon\ninactive_anon 1\n",
		"active_anon -1\ninactive_anon 1\n", "active_anon 18446744073709551616\ninactive_anon 1\n",
		"active_anon 1x\ninactive_anon 1\n",
	} {
		if m, err := ParseMemoryStat([]byte(bad)); err == nil {
			t.Errorf("accepted %q as %+v", bad, m)
		}
	}
}

func FuzzParseMemoryStat(f *testing.F) {
	data, err := os.ReadFile("testdata/memory.stat")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(data))
	f.Add("active_anon 1\ninactive_anon 18446744073709551615\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMemoryStat([]byte(s))
		if err != nil {
			return
		}
		if !strings.Contains(s, "active_anon ") || !strings.Contains(s, "inactive_anon ") {
			t.Fatalf("parsed %+v from %q, which lacks a key", m, s)
		}
		// The same numbers as the standard library reads them.
		for _, line := range strings.Split(s, "\n") {
			k, v, _ := strings.Cut(line, " ")
			want := map[string]uint64{"active_anon": m.ActiveAnon, "inactive_anon": m.InactiveAnon}
			if w, ok := want[k]; ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err != nil || n != w {
					t.Fatalf("%q: parsed %d, strconv says %d, %v", line, w, n, err)
				}
			}
		}
	})
}

// fakeCgroupFS lays out a folder like a cgroup v2 mount with one group.
func fakeCgroupFS(t *testing.T, group, controllers string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, group)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(controllers+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("testdata/memory.stat")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.stat"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// writeAnon rewrites memory.stat in place, as the kernel's file is one
// node whose content changes (the reader keeps it open).
func writeAnon(t *testing.T, root, group string, active, inactive uint64) {
	t.Helper()
	s := "anon 1\nfile 2\ninactive_anon " + strconv.FormatUint(inactive, 10) + "\nactive_anon " + strconv.FormatUint(active, 10) + "\ninactive_file 0\n"
	if err := os.WriteFile(filepath.Join(root, group, "memory.stat"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

const mib = 1 << 20

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestOpenAndRead(t *testing.T) {
	root := fakeCgroupFS(t, "neon-postgres", "cpu memory pids")
	r, err := Open(root, "neon-postgres")
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Read()
	if err != nil || m.NonReclaimable() != 82337792 {
		t.Fatalf("read %+v, %v", m, err)
	}
	writeAnon(t, root, "neon-postgres", 3*mib, 4*mib)
	if m, err := r.Read(); err != nil || m.NonReclaimable() != 7*mib {
		t.Fatalf("after a change: %+v, %v", m, err)
	}
	// A file grown past the reader's buffer is read whole.
	long := strings.Repeat("pgfault 1\n", 2000) + "active_anon 5\ninactive_anon 6\n"
	if err := os.WriteFile(filepath.Join(root, "neon-postgres", "memory.stat"), []byte(long), 0o644); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Read(); err != nil || m.NonReclaimable() != 11 {
		t.Fatalf("long memory.stat: %+v, %v", m, err)
	}
	// Garbage: an error, and the file is reopened at the next read, which
	// fails while it is gone and works once it is back.
	stat := filepath.Join(root, "neon-postgres", "memory.stat")
	if err := os.WriteFile(stat, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Read(); err == nil {
		t.Fatalf("read %+v from garbage", m)
	}
	if err := os.Remove(stat); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Read(); err == nil {
		t.Fatalf("read %+v from a missing memory.stat", m)
	}
	writeAnon(t, root, "neon-postgres", 1*mib, 2*mib)
	if m, err := r.Read(); err != nil || m.NonReclaimable() != 3*mib {
		t.Fatalf("after memory.stat came back: %+v, %v", m, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	if _, err := Open(fakeCgroupFS(t, "neon-postgres", "cpu pids"), "neon-postgres"); err == nil || !strings.Contains(err.Error(), "memory controller") {
		t.Errorf("no memory controller: %v", err)
	}
	if _, err := Open(t.TempDir(), "neon-postgres"); err == nil {
		t.Error("opened a group that does not exist")
	}
	if _, err := Open(fakeCgroupFS(t, "a", "memory"), "../a"); err == nil {
		t.Error("opened a group outside the mount")
	}
	// The host's own /sys/fs/cgroup is cgroup v1 here (docs/development.md#the-test-machines): it
	// must be refused, not read as if it were v2.
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil {
		if _, err := Open(DefaultMountpoint, "neon-postgres"); err == nil || !strings.Contains(err.Error(), "v2") {
			t.Errorf("opened a cgroup on a v1 host: %v", err)
		}
	} else {
		t.Log("not checking the v1 refusal: this host has no cgroup v1 memory controller")
	}
}

type fakeSampler struct{ v chan uint64 }

func (f fakeSampler) Read() (MemoryStat, error) {
	select {
	case v := <-f.v:
		return MemoryStat{ActiveAnon: v}, nil
	default:
		return MemoryStat{}, io.ErrUnexpectedEOF
	}
}

// The watcher's loop with a fake clock: one sample per tick, requests out
// of the channel, read errors leave the stats to go stale.
func TestWatcherLoop(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	fs := fakeSampler{v: make(chan uint64, 100)}
	w := NewWatcher(fs, clk, slog.New(slog.NewTextHandler(io.Discard, nil)))
	samples := make(chan error, 100)
	w.OnSample = func(_ pressure.Stats, _ uint64, err error) { samples <- err }
	w.SetThreshold(100 * mib)

	done := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	fs.v <- 10 * mib // the first sample is taken at once
	if err := <-samples; err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		fs.v <- 500 * mib
		stepWhenWaiting(t, clk)
		if err := <-samples; err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-w.Requests():
		// avg: (10+500)/2 = 255 MiB ≥ 100 MiB at the second sample.
		if !r.CrossedAt.Equal(t0.Add(pressure.SampleInterval)) {
			t.Errorf("crossed at %v, want %v", r.CrossedAt, t0.Add(pressure.SampleInterval))
		}
	default:
		t.Fatal("no upscale request after the average passed the threshold")
	}
	if s := w.Stats(); s.Count != 5 || s.Avg != (10+4*500)*mib/5 {
		t.Errorf("stats %+v", s)
	}
	// A failed read keeps the window; the last sample time stays behind.
	stepWhenWaiting(t, clk)
	if err := <-samples; err == nil {
		t.Fatal("no error from an empty sampler")
	}
	if s := w.Stats(); !s.LastSample.Equal(t0.Add(4 * pressure.SampleInterval)) {
		t.Errorf("last sample %v after a failed read", s.LastSample)
	}
}

// stepWhenWaiting advances the fake clock by one interval once the
// watcher's ticker exists.
func stepWhenWaiting(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	poll.Until(t, 5*time.Second, time.Millisecond, "the watcher's ticker", func() error {
		if !clk.HasWaiters() {
			return errors.New("no ticker yet")
		}
		return nil
	})
	clk.Step(pressure.SampleInterval)
}

// One sample as the watcher takes it, ten times a second.
func BenchmarkRead(b *testing.B) {
	root := b.TempDir()
	dir := filepath.Join(root, "neon-postgres")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile("testdata/memory.stat")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.stat"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("memory\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	r, err := Open(root, "neon-postgres")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Read(); err != nil {
			b.Fatal(err)
		}
	}
}
