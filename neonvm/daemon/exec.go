package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmscale/vmscale/neonvm/guestexec"
)

// findPort returns the /dev node of the virtio-serial port named name.
func findPort(name string) string {
	paths, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p))
		}
	}
	return ""
}

// ServeExecPort serves the exec channel on its virtio-serial port, reopening
// it whenever the host side disconnects, until ctx ends. Without the port
// (QEMU started without it) it waits.
func ServeExecPort(ctx context.Context, logf Logf) {
	announced := false
	for ctx.Err() == nil {
		dev := findPort(guestexec.PortName)
		if dev == "" {
			sleep(ctx, 2*time.Second)
			continue
		}
		if !announced {
			logf("serving the exec channel on %s", dev)
			announced = true
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			logf("open %s: %v", dev, err)
			sleep(ctx, time.Second)
			continue
		}
		_ = guestexec.Serve(ctx, f, guestexec.RunShell)
		f.Close()
		// Reads end when the host is not connected: wait a little before
		// reopening rather than spin.
		sleep(ctx, 50*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
