// Package guest builds what a VM boots: the uncompressed kernel (booted
// through its PVH entry, which under TCG skips seconds of firmware and
// decompression), an initramfs that loads the virtio modules and switches to
// the root disk, and the root disk itself from a root filesystem. cmd/vm-builder
// drives it; hack/guest/build.sh assembles vmscale's test guest with it.
package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os/exec"
)

var xzMagic = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}

// ExtractVmlinux returns the uncompressed ELF kernel inside an XZ-compressed
// bzImage (Debian's vmlinuz). The kernel's XZ stream uses the x86 BCJ filter
// besides LZMA2, which Go's XZ libraries do not implement, so it runs xz(1)
// from Debian's xz-utils.
func ExtractVmlinux(ctx context.Context, bzImage []byte) ([]byte, error) {
	var lastErr error
	for off := 0; ; off++ {
		i := bytes.Index(bzImage[off:], xzMagic)
		if i < 0 {
			if lastErr != nil {
				return nil, fmt.Errorf("no XZ stream in the bzImage decompresses to a kernel: %w", lastErr)
			}
			return nil, errors.New("no XZ-compressed kernel found in the bzImage")
		}
		off += i
		out, err := unxz(ctx, bzImage[off:])
		if err == nil && isELF(out) {
			return out, nil
		}
		lastErr = err // the magic bytes occurred by chance; keep looking
	}
}

func unxz(ctx context.Context, data []byte) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--single-stream")
	cmd.Stdin = bytes.NewReader(data)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// --single-stream ignores what follows the stream; xz still exits 0.
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("xz: %w: %s", err, stderr.String())
	}
	return out.Bytes(), nil
}

func isELF(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Type == elf.ET_EXEC
}
