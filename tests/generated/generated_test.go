// Package generated checks that every generated file in the repository is
// what the generators produce from the current source: CRDs, webhook and
// RBAC manifests, deepcopy code and the rendered deploy/*.yaml are never edited by
// hand and never stale.
package generated

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
)

const repoRoot = "../.."

// generatedFiles are compared one by one; generatedDirs must also hold no
// file the generators no longer produce.
var (
	generatedFiles = []string{
		"api/v1/zz_generated.deepcopy.go",
		"config/webhook/manifests.yaml",
		"config/rbac/role.yaml",
		"deploy/neonvm.yaml",
		"deploy/vmscale.yaml",
		"deploy/vmscale-cert-manager.yaml",
	}
	generatedDirs = []string{"config/crd/bases"}
)

func TestGeneratedFilesAreFresh(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "generate.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/generate.sh: %v\n%s", err, b)
	}
	files := append([]string{}, generatedFiles...)
	for _, dir := range generatedDirs {
		fresh := listDir(t, filepath.Join(out, dir))
		committed := listDir(t, filepath.Join(repoRoot, dir))
		if !equalStrings(fresh, committed) {
			t.Errorf("%s holds %v; the generators make %v (run make generate)", dir, committed, fresh)
		}
		for _, f := range fresh {
			files = append(files, filepath.Join(dir, f))
		}
	}
	for _, f := range files {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Errorf("generator did not produce %s: %v", f, err)
			continue
		}
		got, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Errorf("%s is missing (run make generate): %v", f, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make generate and commit the result", f)
		}
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
