package daemon

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	evKey    = 1
	keyPower = 116
)

// inputEvent is struct input_event on 64-bit Linux.
type inputEvent struct {
	Sec, Usec int64
	Type      uint16
	Code      uint16
	Value     int32
}

// IsPowerPress reports whether an input event is the power button going
// down.
func IsPowerPress(e inputEvent) bool { return e.Type == evKey && e.Code == keyPower && e.Value == 1 }

// powerButtonDevices lists /dev/input/event* devices whose name says they
// are a power button (ACPI's "Power Button").
func powerButtonDevices() []string {
	names, _ := filepath.Glob("/sys/class/input/event*/device/name")
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || !strings.Contains(strings.ToLower(string(b)), "power button") {
			continue
		}
		ev := filepath.Base(filepath.Dir(filepath.Dir(n)))
		out = append(out, "/dev/input/"+ev)
	}
	return out
}

// WatchPowerButton calls onPress when QEMU presses the guest's ACPI power
// button (system_powerdown), until ctx ends.
func WatchPowerButton(ctx context.Context, onPress func(), log *slog.Logger) error {
	var devs []string
	for devs = powerButtonDevices(); len(devs) == 0; devs = powerButtonDevices() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	errs := make(chan error, len(devs))
	for _, d := range devs {
		go func(dev string) {
			f, err := os.Open(dev)
			if err != nil {
				errs <- fmt.Errorf("open %s: %w", dev, err)
				return
			}
			go func() { <-ctx.Done(); f.Close() }()
			log.Info("watching for the power button", "device", dev)
			for {
				var e inputEvent
				if err := binary.Read(f, binary.LittleEndian, &e); err != nil {
					if err == io.EOF || ctx.Err() != nil {
						errs <- nil
					} else {
						errs <- fmt.Errorf("read %s: %w", dev, err)
					}
					return
				}
				if IsPowerPress(e) {
					log.Info("power button pressed", "device", dev)
					onPress()
				}
			}
		}(d)
	}
	return <-errs
}
