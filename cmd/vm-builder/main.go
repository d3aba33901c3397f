// Command vm-builder turns a root filesystem into a bootable vmscale guest:
//
//	vm-builder vmlinux   -in vmlinuz -out vmlinux
//	vm-builder initramfs -kernel-root DIR -busybox PATH -out initrd.img
//	vm-builder disk      -rootfs DIR|-src IMAGE.tar -out disk.qcow2 [-size 2G] -busybox PATH -daemon PATH [-monitor PATH] [-metrics PATH]
//
// It runs on a developer's or CI machine, not in a pod.
// vmscale:no-image
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/vmscale/vmscale/neonvm/guest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vm-builder vmlinux|initramfs|disk [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var err error
	switch os.Args[1] {
	case "vmlinux":
		in := fs.String("in", "", "Debian's vmlinuz (bzImage)")
		out := fs.String("out", "", "where to write the uncompressed kernel")
		_ = fs.Parse(os.Args[2:])
		err = vmlinux(ctx, *in, *out)
	case "initramfs":
		root := fs.String("kernel-root", "", "a linux-image package extracted with dpkg-deb -x")
		bb := fs.String("busybox", "/bin/busybox", "a static busybox")
		out := fs.String("out", "", "where to write the initramfs")
		_ = fs.Parse(os.Args[2:])
		var buf bytes.Buffer
		if err = guest.BuildInitramfs(&buf, *root, *bb); err == nil {
			err = os.WriteFile(*out, buf.Bytes(), 0o644)
		}
	case "disk":
		rootfs := fs.String("rootfs", "", "the guest's root filesystem (a folder)")
		src := fs.String("src", "", "or: an image tarball (docker save / make images) whose filesystem becomes the root")
		out := fs.String("out", "", "the qcow2 disk to write")
		size := fs.String("size", "2G", "disk size")
		var bins guest.GuestBinaries
		fs.StringVar(&bins.Busybox, "busybox", "/bin/busybox", "a static busybox")
		fs.StringVar(&bins.Daemon, "daemon", "", "neonvm-daemon")
		fs.StringVar(&bins.Monitor, "monitor", "", "vm-monitor (optional)")
		fs.StringVar(&bins.Metrics, "metrics", "", "guest metrics exporter (optional)")
		_ = fs.Parse(os.Args[2:])
		err = disk(ctx, *rootfs, *src, *out, *size, bins)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vm-builder:", err)
		os.Exit(1)
	}
}

func vmlinux(ctx context.Context, in, out string) error {
	bz, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	k, err := guest.ExtractVmlinux(ctx, bz)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	return os.WriteFile(out, k, 0o644)
}

func disk(ctx context.Context, rootfs, src, out, size string, bins guest.GuestBinaries) error {
	switch {
	case (rootfs == "") == (src == ""):
		return fmt.Errorf("disk: give exactly one of -rootfs and -src")
	case src != "":
		tmp, err := os.MkdirTemp("", "vm-builder-rootfs-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if err := guest.UnpackImageTarball(src, tmp); err != nil {
			return err
		}
		rootfs = tmp
	}
	if err := guest.InstallNeonVMFiles(rootfs, bins); err != nil {
		return err
	}
	return guest.BuildDisk(ctx, rootfs, out, size)
}
