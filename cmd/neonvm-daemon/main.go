// Command neonvm-daemon is vmscale's agent inside the guest (started and
// respawned by the guest's init): it onlines hot-plugged vCPUs on their
// uevents, powers the guest off on the ACPI power button, and serves
// the exec channel.
// vmscale:no-image
package main

import (
	"context"
	"log"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/vmscale/vmscale/neonvm/daemon"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("neonvm-daemon: ")
	// init gives the daemon the console as stderr: where an operator
	// watching the VM looks.
	logf := log.Printf
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	go func() {
		if err := daemon.WatchHotplug(ctx, logf); err != nil {
			logf("hotplug watcher stopped: %v", err)
		}
	}()
	go func() {
		err := daemon.WatchPowerButton(ctx, func() {
			// busybox init runs the shutdown actions, stops every process
			// and powers off.
			if err := exec.Command("/neonvm/bin/busybox", "poweroff").Run(); err != nil {
				logf("poweroff: %v", err)
			}
		}, logf)
		if err != nil {
			logf("power button watcher stopped: %v", err)
		}
	}()
	daemon.ServeExecPort(ctx, logf)
}
