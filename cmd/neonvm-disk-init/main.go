// Command neonvm-disk-init is the runner pod's init container in a root-disk
// image (the image holds it and /disk.qcow2, nothing else: no shell). It
// moves the disk into the pod's images folder, gives it to QEMU's user and
// turns on IPv4 forwarding for the guest's network in the pod:
//
//	neonvm-disk-init [-src /disk.qcow2] [-dst /vm/images/rootdisk.qcow2] [-owner 36:36] [-ip-forward=true]
//
// vmscale:no-image
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/vmscale/vmscale/neonvm/diskinit"
)

func main() {
	var opts diskinit.Options
	flag.StringVar(&opts.Src, "src", "/disk.qcow2", "the root disk in this image")
	flag.StringVar(&opts.Dst, "dst", "/vm/images/rootdisk.qcow2", "where the runner opens it")
	flag.StringVar(&opts.Owner, "owner", "36:36", "uid:gid of QEMU's user in the runner image")
	flag.BoolVar(&opts.IPForward, "ip-forward", true, "set net.ipv4.ip_forward=1 in the pod")
	flag.Parse()
	start := time.Now()
	n, err := diskinit.Run(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "neonvm-disk-init:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "neonvm-disk-init: %s -> %s (%d MiB) in %s\n", opts.Src, opts.Dst, n>>20, time.Since(start).Round(time.Millisecond))
}
