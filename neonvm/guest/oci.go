package guest

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// UnpackImageTarball extracts the root filesystem of the image in an image
// tarball (`docker save` layout, as `make images` and most tools write it:
// a manifest.json naming the layers in order) into dir, applying each
// layer's whiteouts. Ownership and modes are kept as far as the process's
// privileges allow; device nodes are skipped (the guest gets devtmpfs).
func UnpackImageTarball(tarball, dir string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	manifest, err := readMember(f, "manifest.json")
	if err != nil {
		return fmt.Errorf("%s: %w", tarball, err)
	}
	var m []struct {
		Layers []string `json:"Layers"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil || len(m) != 1 {
		return fmt.Errorf("%s: manifest.json does not describe exactly one image", tarball)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, layer := range m[0].Layers {
		if err := applyLayer(f, layer, dir); err != nil {
			return fmt.Errorf("%s: layer %s: %w", tarball, layer, err)
		}
	}
	return nil
}

// readMember returns one file of the outer tarball.
func readMember(f *os.File, name string) ([]byte, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("no %s in the image tarball", name)
		}
		if err != nil {
			return nil, err
		}
		if path.Clean(h.Name) == name {
			return io.ReadAll(tr)
		}
	}
}

func applyLayer(f *os.File, name, dir string) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return errors.New("not in the image tarball")
		}
		if err != nil {
			return err
		}
		if path.Clean(h.Name) != path.Clean(name) {
			continue
		}
		br := bufio.NewReader(tr)
		var r io.Reader = br
		if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
			zr, err := gzip.NewReader(br)
			if err != nil {
				return err
			}
			defer zr.Close()
			r = zr
		}
		return extract(tar.NewReader(r), dir)
	}
}

// extract writes one layer over dir. Names are confined to dir.
func extract(tr *tar.Reader, dir string) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		rel := path.Clean("/" + h.Name)
		target := filepath.Join(dir, filepath.FromSlash(rel))
		base := path.Base(rel)
		// Whiteouts delete what lower layers put there.
		if base == ".wh..wh..opq" {
			entries, _ := os.ReadDir(filepath.Dir(target))
			for _, e := range entries {
				os.RemoveAll(filepath.Join(filepath.Dir(target), e.Name()))
			}
			continue
		}
		if strings.HasPrefix(base, ".wh.") {
			os.RemoveAll(filepath.Join(filepath.Dir(target), strings.TrimPrefix(base, ".wh.")))
			continue
		}
		mode := os.FileMode(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			os.Remove(target)
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(target), 0o755)
			os.Remove(target)
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			os.MkdirAll(filepath.Dir(target), 0o755)
			os.Remove(target)
			if err := os.Link(filepath.Join(dir, filepath.FromSlash(path.Clean("/"+h.Linkname))), target); err != nil {
				return err
			}
		default:
			continue // devices and fifos: the guest has devtmpfs
		}
		_ = os.Lchown(target, h.Uid, h.Gid)
	}
}
