// Command neonvm-daemon is vmscale's agent inside the guest (started and
// respawned by the guest's init): it onlines hot-plugged vCPUs on their
// uevents, powers the guest off on the ACPI power button, and serves
// the exec channel, GET/PUT /cpu (SysfsScaling) and GET/PUT /files/<path>
// (watched ConfigMap/Secret disks) on :25183.
// vmscale:no-image
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmscale/vmscale/neonvm/daemon"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("neonvm-daemon: ")
	// init gives the daemon the console as stderr: where an operator
	// watching the VM looks.
	logf := log.Printf
	addr := flag.String("addr", "0.0.0.0:25183", "address of the /cpu API")
	flag.Parse()
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
	go serveAPI(ctx, *addr, logf)
	daemon.ServeExecPort(ctx, logf)
}

// serveAPI serves GET/PUT /cpu (SysfsScaling) and GET/PUT /files/ (watched
// disks) for the runner.
func serveAPI(ctx context.Context, addr string, logf daemon.Logf) {
	mux := http.NewServeMux()
	mux.Handle("/cpu", &daemon.CPUServer{Sys: "/sys"})
	mux.Handle("/files/", &daemon.FilesServer{Root: "/", Logf: logf})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	logf("serving /cpu and /files/ on %s", addr)
	if err := srv.ListenAndServe(); err != nil && ctx.Err() == nil {
		logf("API on %s stopped: %v", addr, err)
	}
}
