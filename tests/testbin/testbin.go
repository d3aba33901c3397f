// Package testbin builds the project's commands for tests that run them as
// processes: each once per test binary, into one temporary folder that
// Cleanup removes (call it from TestMain), so repeated runs leave nothing
// behind in the temporary directory.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]result{}
)

type result struct {
	bin string
	err error
}

// Build builds the Go package pkg (e.g. "./cmd/neonvm-controller", relative
// to root, the module's folder) the first time it is asked for, and returns
// the binary's path; a failed build fails t (every time it is asked for).
func Build(t testing.TB, root, pkg string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	r, ok := built[pkg]
	if !ok {
		r = build(root, pkg)
		built[pkg] = r
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.bin
}

func build(root, pkg string) result {
	if dir == "" {
		d, err := os.MkdirTemp("", "vmscale-testbin-")
		if err != nil {
			return result{err: fmt.Errorf("temporary folder for test binaries: %w", err)}
		}
		dir = d
	}
	bin := filepath.Join(dir, path.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return result{err: fmt.Errorf("build %s: %w\n%s", pkg, err, out)}
	}
	return result{bin: bin}
}

// Cleanup removes every binary built; later Builds build again.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
	}
	dir = ""
	built = map[string]result{}
}
