// Package cluster gives tests vmscale's local two-node cluster
// (hack/local-cluster): Kubeconfig brings it up when it is not running — the
// script is idempotent and serialised by a lock, so every test package may
// call it — and Kubectl runs the cluster's own kubectl against it.
package cluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Nodes are the local cluster's node names.
var Nodes = []string{"node-a", "node-b"}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Script is the path of hack/local-cluster/cluster.sh.
func Script() string { return filepath.Join(repoRoot(), "hack", "local-cluster", "cluster.sh") }

// Run runs cluster.sh with args, streaming its progress to the test log's
// stderr, and returns its standard output.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(Script(), args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cluster.sh %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(out.String())
}

// Kubeconfig brings the local cluster up if needed and returns the path of
// its admin kubeconfig.
func Kubeconfig(t testing.TB) string {
	t.Helper()
	out := Run(t, "up")
	lines := strings.Split(out, "\n")
	path := lines[len(lines)-1]
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("cluster.sh up printed %q, not a kubeconfig: %v", out, err)
	}
	return path
}

// cacheDir is the project's cache folder, as hack/lib/common.sh sets it.
func cacheDir() string {
	if cache := os.Getenv("VMSCALE_CACHE"); cache != "" {
		return cache
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "vmscale")
}

// clusterDir is cluster.sh's state folder.
func clusterDir() string {
	if dir := os.Getenv("VMSCALE_CLUSTER_DIR"); dir != "" {
		return dir
	}
	return filepath.Join(cacheDir(), "local-cluster")
}

// binDir is where cluster.sh recorded the Kubernetes binaries it uses.
func binDir() (string, error) {
	b, err := os.ReadFile(filepath.Join(clusterDir(), "bin"))
	if err != nil {
		return "", fmt.Errorf("local cluster binaries unknown (run cluster.sh up): %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Kubectl runs kubectl against the cluster and returns stdout; it fails the
// test on a non-zero exit, with stderr in the message.
func Kubectl(t testing.TB, kubeconfig string, args ...string) string {
	t.Helper()
	out, err := TryKubectl(kubeconfig, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryKubectl is Kubectl that returns the error instead of failing.
func TryKubectl(kubeconfig string, args ...string) (string, error) {
	bin, err := binDir()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Image is the reference of a vmscale image the cluster's nodes hold, by
// short name (as `make images` lists it).
func Image(t testing.TB, name string) string {
	t.Helper()
	cache := cacheDir()
	index, err := os.ReadFile(filepath.Join(cache, "images", "images.txt"))
	if err != nil {
		t.Fatalf("no image index (make images): %v", err)
	}
	for _, line := range strings.Split(string(index), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			return f[1]
		}
	}
	t.Fatalf("image %s not in %s", name, filepath.Join(cache, "images", "images.txt"))
	return ""
}
