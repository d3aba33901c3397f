// Package daemon is neonvm-daemon, the agent inside the guest: it onlines
// hot-plugged vCPUs as their kernel uevents arrive (no polling),
// powers the guest off when QEMU presses the ACPI power button, and serves
// the exec channel (neonvm/guestexec).
package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Uevent is one kernel uevent.
type Uevent struct {
	Action    string
	DevPath   string
	Subsystem string
	Env       map[string]string
}

// ParseUevent decodes a kernel uevent netlink message
// ("add@/devices/...\0ACTION=add\0DEVPATH=...\0SUBSYSTEM=cpu\0...").
// Messages from udev (prefixed "libudev") are not the kernel's and are
// rejected.
func ParseUevent(msg []byte) (Uevent, error) {
	parts := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	if len(parts) < 2 || !bytes.Contains(parts[0], []byte("@")) {
		return Uevent{}, fmt.Errorf("not a kernel uevent: %q", truncate(msg))
	}
	ev := Uevent{Env: map[string]string{}}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(string(p), "=")
		if !ok {
			continue
		}
		ev.Env[k] = v
	}
	ev.Action, ev.DevPath, ev.Subsystem = ev.Env["ACTION"], ev.Env["DEVPATH"], ev.Env["SUBSYSTEM"]
	if ev.Action == "" || ev.DevPath == "" {
		return Uevent{}, fmt.Errorf("uevent without ACTION or DEVPATH: %q", truncate(msg))
	}
	return ev, nil
}

func truncate(b []byte) []byte {
	if len(b) > 120 {
		return b[:120]
	}
	return b
}

// OnlineAction is what to write to a hot-plugged device's online control,
// if anything: "1" for a vCPU. Memory blocks are left to the kernel, which
// onlines them itself (memhp_default_state=online with the auto-movable
// policy decides their zone; writing the state as well only races it).
func OnlineAction(ev Uevent) (file, value string, ok bool) {
	if ev.Action == "add" && ev.Subsystem == "cpu" {
		return filepath.Join("/sys", ev.DevPath, "online"), "1", true
	}
	return "", "", false
}

// WatchHotplug listens for kernel uevents and onlines every vCPU added,
// until ctx ends.
func WatchHotplug(ctx context.Context, log *slog.Logger) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return fmt.Errorf("open uevent socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1, Pid: 0}); err != nil {
		return fmt.Errorf("bind uevent socket: %w", err)
	}
	go func() { <-ctx.Done(); unix.Close(fd) }()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if err == unix.EINTR || err == unix.ENOBUFS {
				continue
			}
			return fmt.Errorf("read uevent: %w", err)
		}
		ev, err := ParseUevent(buf[:n])
		if err != nil {
			continue
		}
		file, value, ok := OnlineAction(ev)
		if !ok {
			continue
		}
		if err := online(file, value); err != nil {
			log.Error("cannot online a hot-plugged vCPU", "devpath", ev.DevPath, "err", err)
			continue
		}
		log.Info("onlined a hot-plugged vCPU", "devpath", ev.DevPath)
	}
}

// online writes value unless the device is already online.
func online(file, value string) error {
	cur, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	s := strings.TrimSpace(string(cur))
	if s == "1" || strings.HasPrefix(s, "online") {
		return nil
	}
	return os.WriteFile(file, []byte(value), 0o644)
}
