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
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmscale/vmscale/neonvm/daemon"
)

func main() {
	// init gives the daemon the console as stderr: where an operator
	// watching the VM looks. Text, as a person reads it there.
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("cmd", "neonvm-daemon")
	addr := flag.String("addr", "0.0.0.0:25183", "address of the /cpu API")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	go func() {
		if err := daemon.WatchHotplug(ctx, log); err != nil {
			log.Error("hotplug watcher stopped", "err", err)
		}
	}()
	go func() {
		err := daemon.WatchPowerButton(ctx, func() {
			// busybox init runs the shutdown actions, stops every process
			// and powers off.
			if err := exec.Command("/neonvm/bin/busybox", "poweroff").Run(); err != nil {
				log.Error("poweroff failed", "err", err)
			}
		}, log)
		if err != nil {
			log.Error("power button watcher stopped", "err", err)
		}
	}()
	go serveAPI(ctx, *addr, log)
	daemon.ServeExecPort(ctx, log)
}

// serveAPI serves GET/PUT /cpu (SysfsScaling) and GET/PUT /files/ (watched
// disks) for the runner.
func serveAPI(ctx context.Context, addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/cpu", &daemon.CPUServer{Sys: "/sys"})
	mux.Handle("/files/", &daemon.FilesServer{Root: "/", Log: log})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	log.Info("serving /cpu and /files/", "addr", addr)
	if err := srv.ListenAndServe(); err != nil && ctx.Err() == nil {
		log.Error("API stopped", "addr", addr, "err", err)
	}
}
