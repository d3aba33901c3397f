// Command images builds vmscale's container images without a Docker engine:
// one image per binary under cmd/ (and tests/images/) that runs in a pod
// (found, not listed),
// plus the pod sandbox (pause) image, each written as an image tarball that
// `ctr images import` loads. Same inputs, same digests: binaries are built
// reproducibly and every timestamp is fixed.
//
//	go run . -root ../.. -out DIR [-only a,b] [-extra name=/path/to/binary]
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
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("images: ")
	if *out == "" {
		log.Fatal("-out is required")
	}
	if err := run(*root, *out, *tag, *only, extra); err != nil {
		log.Fatal(err)
	}
}

func run(root, out, tag, only string, extra extras) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if tag == "" {
		if tag, err = SourceTag(root); err != nil {
			return err
		}
	}
	bins, err := Discover(root)
	if err != nil {
		return err
	}
	if only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			keep[n] = true
		}
		bins = slices.DeleteFunc(bins, func(b Binary) bool { return !keep[b.Name] })
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "vmscale-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var index []string
	add := func(short, ref, bin string) error {
		start := time.Now()
		data, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		img, err := Build(Image{
			Name:       short,
			Entrypoint: []string{"/" + short},
			Files: []File{
				{Path: "/" + short, Mode: 0o755, Data: data},
				{Path: "/tmp", Mode: 0o1777, Dir: true},
			},
		})
		if err != nil {
			return err
		}
		t, err := name.NewTag(ref)
		if err != nil {
			return fmt.Errorf("image name %s: %w", ref, err)
		}
		digest, err := Write(filepath.Join(out, short+".tar"), t, img)
		if err != nil {
			return err
		}
		log.Printf("%-22s %s %s (%s)", short, t.String(), digest, time.Since(start).Round(time.Millisecond))
		index = append(index, fmt.Sprintf("%s %s %s", short, t.String(), digest))
		return nil
	}

	for _, b := range bins {
		bin := filepath.Join(work, b.Name)
		log.Printf("building %s", b.Pkg)
		if err := GoBuild(root, b.Pkg, bin); err != nil {
			return err
		}
		if err := add(b.Name, "vmscale/"+b.Name+":"+tag, bin); err != nil {
			return err
		}
	}
	pause := filepath.Join(work, "pause")
	if err := GoBuild(filepath.Join(root, "hack", "images"), "./pause", pause); err != nil {
		return err
	}
	if err := add("pause", PauseRef, pause); err != nil {
		return err
	}
	for n, bin := range extra {
		if err := add(n, "vmscale/"+n+":"+tag, bin); err != nil {
			return err
		}
	}
	index = append(index, "")
	return os.WriteFile(filepath.Join(out, "images.txt"), []byte(strings.Join(index, "\n")), 0o644)
}
