// Command images builds vmscale's container images without a Docker engine:
// one image per binary under cmd/ (and tests/images/) that runs in a pod
// (found, not listed),
// plus the pod sandbox (pause) image, each written as an image tarball that
// `ctr images import` loads. Same inputs, same digests: binaries are built
// reproducibly and every timestamp is fixed.
//
//	go run . -root ../.. -out DIR [-only a,b] [-extra name=/path/to/binary]
//	         [-runner-rootfs ROOT.tar -guest DIR]
//
// With -runner-rootfs (hack/runner-rootfs.sh) and -guest (hack/guest/build.sh)
// the neonvm-runner image is the runner on that Debian root with the guest
// kernel at /vm/kernel, and a root-disk image vmscale/vm-postgres holds the
// guest's /disk.qcow2 and the init container's neonvm-disk-init.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// PauseRef is the sandbox image containerd is configured with.
const PauseRef = "vmscale/pause:v1"

type extras map[string]string

func (e extras) String() string { return fmt.Sprint(map[string]string(e)) }
func (e extras) Set(s string) error {
	n, p, ok := strings.Cut(s, "=")
	if !ok || n == "" || p == "" {
		return fmt.Errorf("-extra wants name=/path/to/binary, got %q", s)
	}
	e[n] = p
	return nil
}

func main() {
	root := flag.String("root", "../..", "the vmscale repository")
	out := flag.String("out", "", "folder for the image tarballs (required)")
	tag := flag.String("tag", "", "image tag (default: derived from the source revision)")
	only := flag.String("only", "", "comma-separated cmd names to build (default: all that run in a pod)")
	extra := extras{}
	flag.Var(extra, "extra", "also package a prebuilt static binary as vmscale/<name> (repeatable)")
	var g guestInputs
	flag.StringVar(&g.rootfs, "runner-rootfs", "", "the runner image's Debian root as a tar file (hack/runner-rootfs.sh)")
	flag.StringVar(&g.dir, "guest", "", "the guest folder: vmlinux, initrd.img, disk.qcow2 (hack/guest/build.sh)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("images: ")
	if *out == "" {
		log.Fatal("-out is required")
	}
	if (g.rootfs == "") != (g.dir == "") {
		log.Fatal("-runner-rootfs and -guest go together")
	}
	if err := run(*root, *out, *tag, *only, extra, g); err != nil {
		log.Fatal(err)
	}
}

// guestInputs are what the runner and root-disk images are made of besides
// this repository's binaries.
type guestInputs struct{ rootfs, dir string }

// RunnerImage and RootDiskImage are the short names of the images built
// from guestInputs.
const (
	RunnerImage   = "neonvm-runner"
	RootDiskImage = "vm-postgres"
	diskInit      = "neonvm-disk-init"
)

func run(root, out, tag, only string, extra extras, g guestInputs) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if tag == "" {
		if tag, err = SourceTag(root); err != nil {
			return fmt.Errorf("source tag: %w", err)
		}
	}
	bins, err := selectBinaries(root, only)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "vmscale-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	b := &imageSet{root: root, out: out, work: work, guest: g}
	for _, bin := range bins {
		if err := b.addBinary(bin.Name, "vmscale/"+bin.Name+":"+tag, bin.Pkg); err != nil {
			return err
		}
	}
	if err := b.addPause(); err != nil {
		return err
	}
	if g.dir != "" && (only == "" || strings.Contains(","+only+",", ","+RootDiskImage+",")) {
		if err := b.addRootDisk("vmscale/" + RootDiskImage + ":" + tag); err != nil {
			return err
		}
	}
	for n, bin := range extra {
		if err := b.addFile(n, "vmscale/"+n+":"+tag, bin); err != nil {
			return err
		}
	}
	return b.writeIndex()
}

// selectBinaries is every pod binary of the repository, or those named in
// only (comma-separated).
func selectBinaries(root, only string) ([]Binary, error) {
	bins, err := Discover(root)
	if err != nil {
		return nil, fmt.Errorf("find binaries: %w", err)
	}
	if only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			keep[n] = true
		}
		bins = slices.DeleteFunc(bins, func(b Binary) bool { return !keep[b.Name] })
	}
	return bins, nil
}

// imageSet writes image tarballs into out and remembers each for the
// images.txt index.
type imageSet struct {
	root, out, work string
	guest           guestInputs
	index           []string
}

// add builds spec into out/<name>.tar, tagged ref.
func (b *imageSet) add(spec Image, ref string) error {
	short := spec.Name
	start := time.Now()
	img, err := Build(spec)
	if err != nil {
		return fmt.Errorf("build image %s: %w", short, err)
	}
	t, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %s: %w", ref, err)
	}
	digest, err := Write(filepath.Join(b.out, short+".tar"), t, img)
	if err != nil {
		return fmt.Errorf("write image %s: %w", short, err)
	}
	log.Printf("%-22s %s %s (%s)", short, t.String(), digest, time.Since(start).Round(time.Millisecond))
	b.index = append(b.index, fmt.Sprintf("%s %s %s", short, t.String(), digest))
	return nil
}

// addBinary builds the Go package pkg of the repository and makes an image
// of it.
func (b *imageSet) addBinary(short, ref, pkg string) error {
	bin := filepath.Join(b.work, short)
	log.Printf("building %s", pkg)
	if err := GoBuild(b.root, pkg, bin); err != nil {
		return err
	}
	return b.addFile(short, ref, bin)
}

// addPause builds the pause container of hack/images/pause.
func (b *imageSet) addPause() error {
	pause := filepath.Join(b.work, "pause")
	if err := GoBuild(filepath.Join(b.root, "hack", "images"), "./pause", pause); err != nil {
		return err
	}
	return b.addFile("pause", PauseRef, pause)
}

// addFile makes an image whose entrypoint is the executable bin; the
// runner's image also gets the Debian root and the guest kernel.
func (b *imageSet) addFile(short, ref, bin string) error {
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	spec := Image{
		Name:       short,
		Entrypoint: []string{"/" + short},
		Files: []File{
			{Path: "/" + short, Mode: 0o755, Data: data},
			{Path: "/tmp", Mode: 0o1777, Dir: true},
		},
	}
	if short == RunnerImage && b.guest.rootfs != "" {
		kernel, err := guestFiles(b.guest.dir, map[string]string{"vmlinux": "/vm/kernel/vmlinux", "initrd.img": "/vm/kernel/initrd.img"})
		if err != nil {
			return err
		}
		spec.Base, spec.Layers = []string{b.guest.rootfs}, [][]File{kernel}
	}
	return b.add(spec, ref)
}

// addRootDisk makes the guest's root disk image: /disk.qcow2 plus the disk
// init helper as its entrypoint.
func (b *imageSet) addRootDisk(ref string) error {
	bin := filepath.Join(b.work, diskInit)
	if err := GoBuild(b.root, "./cmd/"+diskInit, bin); err != nil {
		return err
	}
	files, err := guestFiles(b.guest.dir, map[string]string{"disk.qcow2": "/disk.qcow2"})
	if err != nil {
		return err
	}
	helper, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	spec := Image{Name: RootDiskImage, Entrypoint: []string{"/" + diskInit},
		Layers: [][]File{files}, Files: []File{{Path: "/" + diskInit, Mode: 0o755, Data: helper}}}
	return b.add(spec, ref)
}

// writeIndex writes images.txt: a line "short ref digest" per image.
func (b *imageSet) writeIndex() error {
	index := append(b.index, "")
	return os.WriteFile(filepath.Join(b.out, "images.txt"), []byte(strings.Join(index, "\n")), 0o644)
}

// guestFiles reads files of the guest folder into image files: name in dir
// to path in the image.
func guestFiles(dir string, paths map[string]string) ([]File, error) {
	var out []File
	for name, path := range paths {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("the guest folder (hack/guest/build.sh): %w", err)
		}
		out = append(out, File{Path: path, Mode: 0o644, Data: data})
	}
	return out, nil
}
