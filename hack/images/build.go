package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NoImageMarker in a cmd's main.go keeps it out of the images: binaries that
// run in the guest or on a developer's machine, not in a pod.
const NoImageMarker = "vmscale:no-image"

// epoch is every timestamp in an image, so the same inputs give the same
// digest.
var epoch = time.Unix(0, 0).UTC()

// File is one file in an image layer.
type File struct {
	Path string // absolute path in the image
	Mode int64
	Data []byte
	Dir  bool
}

// Image describes one image to build.
type Image struct {
	Name string // short name: the repository is vmscale/<Name>
	// Base are layer tar files (a Debian root, say) at the bottom of the
	// image, in order.
	Base []string
	// Layers go on top of Base, one layer each, in order; Files is the
	// topmost.
	Layers     [][]File
	Files      []File
	Entrypoint []string // the config's entrypoint
}

// Binary is a Go main package that gets an image.
type Binary struct {
	Name string // image short name: the folder's name
	Pkg  string // package path relative to the repository root, "./cmd/x"
}

// ImageDirs are the folders whose sub-folders are binaries with images:
// the product's (cmd/) and the test workloads the cluster tests run.
var ImageDirs = []string{"cmd", "tests/images"}

// Discover lists the binaries that run in a pod: every folder of root's
// ImageDirs with a main.go that does not carry NoImageMarker.
func Discover(root string) ([]Binary, error) {
	var out []Binary
	for _, dir := range ImageDirs {
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s/: %w", dir, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			src, err := os.ReadFile(filepath.Join(root, dir, e.Name(), "main.go"))
			if err != nil {
				continue // not a binary
			}
			if bytes.Contains(src, []byte(NoImageMarker)) {
				continue
			}
			out = append(out, Binary{Name: e.Name(), Pkg: "./" + dir + "/" + e.Name()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// GoBuild builds a static, reproducible binary of pkg (run in dir) into out.
func GoBuild(dir, pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return nil
}

// LayerTar writes files as a tar stream with fixed owners and timestamps,
// sorted by path, creating parent folders.
func LayerTar(files []File) ([]byte, error) {
	all := map[string]File{}
	for _, f := range files {
		p := strings.TrimPrefix(filepath.Clean(f.Path), "/")
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = File{Path: d, Mode: 0o755, Dir: true}
			}
		}
		f.Path = p
		all[p] = f
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := all[p]
		hdr := &tar.Header{Name: p, Mode: f.Mode, ModTime: epoch, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if f.Dir {
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", p, err)
		}
		if !f.Dir {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("tar %s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layerOpts: OCI media type, and the fastest gzip level (images are big
// and built often; they never cross a network).
var layerOpts = []tarball.LayerOption{tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed)}

// Build assembles an OCI image from spec: its base layers, then one layer
// per file set, a config with fixed timestamps, linux on this machine's
// architecture.
func Build(spec Image) (v1.Image, error) {
	var layers []v1.Layer
	for _, path := range spec.Base {
		layer, err := tarball.LayerFromFile(path, layerOpts...)
		if err != nil {
			return nil, fmt.Errorf("base layer %s of %s: %w", path, spec.Name, err)
		}
		layers = append(layers, layer)
	}
	for _, files := range append(append([][]File{}, spec.Layers...), spec.Files) {
		if len(files) == 0 {
			continue
		}
		data, err := LayerTar(files)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, layerOpts...)
		if err != nil {
			return nil, fmt.Errorf("layer of %s: %w", spec.Name, err)
		}
		layers = append(layers, layer)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, layer := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   layer,
			History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "vmscale hack/images", Comment: spec.Name},
		})
		if err != nil {
			return nil, fmt.Errorf("append a layer of %s: %w", spec.Name, err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Created = v1.Time{Time: epoch}
	cfg.OS = "linux"
	cfg.Architecture = runtime.GOARCH
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.title": spec.Name}
	return mutate.ConfigFile(img, cfg)
}

// Write stores img as an image tarball that `ctr images import` reads,
// named ref.
func Write(path string, ref name.Tag, img v1.Image) (v1.Hash, error) {
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return v1.Hash{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// SourceTag names the source revision: the short commit, plus a hash of the
// uncommitted changes when the tree is dirty, so two different trees never
// share a tag.
func SourceTag(root string) (string, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	rev, err := git("rev-parse", "--short=12", "HEAD")
	if err != nil {
		return "", fmt.Errorf("read the source revision (git rev-parse): %w", err)
	}
	diff, err := git("diff", "HEAD")
	if err != nil {
		return "", fmt.Errorf("git diff: %w", err)
	}
	untracked, err := git("ls-files", "--others", "--exclude-standard")
	if err != nil {
		return "", fmt.Errorf("git ls-files: %w", err)
	}
	if diff == "" && untracked == "" {
		return rev, nil
	}
	h := sha256.New()
	h.Write([]byte(diff))
	for _, f := range strings.Fields(untracked) {
		data, _ := os.ReadFile(filepath.Join(root, f))
		h.Write([]byte(f))
		h.Write(data)
	}
	return rev + "-dirty-" + hex.EncodeToString(h.Sum(nil))[:8], nil
}
