package daemon

import (
	"context"
	"log/slog"
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

// ServeExecPort serves the exec channel on its virtio-serial port until ctx
// ends. Without the port (QEMU started without it) it waits. The port stays
// open for the daemon's life: reads end (EOF) whenever the host side
// disconnects, and closing the port then would make the guest driver drop a
// request the host sent on reconnecting.
func ServeExecPort(ctx context.Context, log *slog.Logger) {
	var f *os.File
	for ctx.Err() == nil {
		dev := findPort(guestexec.PortName)
		if dev == "" {
			sleep(ctx, 2*time.Second)
			continue
		}
		var err error
		if f, err = os.OpenFile(dev, os.O_RDWR, 0); err != nil {
			log.Warn("cannot open the exec channel", "device", dev, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		log.Info("serving the exec channel", "device", dev)
		break
	}
	if f == nil {
		return
	}
	defer f.Close()
	for ctx.Err() == nil {
		_ = guestexec.Serve(ctx, f, guestexec.RunShell)
		sleep(ctx, 20*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
