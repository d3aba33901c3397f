package guest

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed files
var files embed.FS

// InitramfsModules are the Debian kernel modules the guest needs before its
// root disk is mounted, in load order (each after its dependencies).
var InitramfsModules = []string{
	"crc16", "mbcache", "jbd2", "crc32c_generic", "ext4",
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"virtio_blk", "failover", "net_failover", "virtio_net", "virtio_mem", "virtio_console",
	"cdrom", "isofs", "button", "evdev",
}

// BuildInitramfs writes the initramfs: busybox, the modules of the kernel
// unpacked at kernelRoot (a Debian linux-image package extracted with
// dpkg-deb -x), and an init that mounts /dev/vda and switches to it.
func BuildInitramfs(w io.Writer, kernelRoot, busybox string) error {
	found := map[string]string{}
	err := filepath.WalkDir(filepath.Join(kernelRoot, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			found[name] = p
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("find kernel modules under %s: %w", kernelRoot, err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	init, err := files.ReadFile("files/initramfs-init")
	if err != nil {
		return err
	}
	out := []File{
		{Path: "/init", Mode: 0o755, Data: init},
		{Path: "/bin/busybox", Mode: 0o755, Data: bb},
		{Path: "/etc/modules.order", Mode: 0o644, Data: []byte(strings.Join(InitramfsModules, "\n") + "\n")},
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/newroot", "/sbin", "/usr/bin", "/usr/sbin"} {
		out = append(out, File{Path: d, Mode: 0o755, Dir: true})
	}
	for _, m := range InitramfsModules {
		p, ok := found[m]
		if !ok {
			return fmt.Errorf("kernel module %s not found under %s", m, kernelRoot)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out = append(out, File{Path: "/lib/modules/" + m + ".ko", Mode: 0o644, Data: data})
	}
	return WriteInitramfs(w, out)
}

// MonitorPgConnstr is how the guest's vm-monitor reaches its Postgres to
// size the cache (the guest's superuser; trust auth on loopback).
const MonitorPgConnstr = "host=127.0.0.1 port=5432 dbname=postgres user=postgres sslmode=disable application_name=vm-monitor"

// GuestBinaries are the programs vm-builder installs under /neonvm/bin.
type GuestBinaries struct {
	Busybox string // a static busybox
	Daemon  string // neonvm-daemon
	Monitor string // vm-monitor (optional)
	Metrics string // guest metrics exporter (optional)
}

// InstallNeonVMFiles adds /neonvm/bin (busybox as init, the sysinit and
// shutdown scripts, the guest binaries) and an /etc/inittab that starts and
// respawns the services present, to a root filesystem.
func InstallNeonVMFiles(rootfs string, bins GuestBinaries) error {
	bin := filepath.Join(rootfs, "neonvm", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"vminit", "vmshutdown", "postgres-start", "udhcpc-script", "cmdline-ip"} {
		data, err := files.ReadFile("files/" + name)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(bin, name), data, 0o755); err != nil {
			return fmt.Errorf("install /neonvm/bin/%s: %w", name, err)
		}
	}
	inittab := []string{
		"# Written by vm-builder: busybox init runs vminit, then keeps the services up.",
		"::sysinit:/neonvm/bin/vminit",
		"::respawn:/neonvm/bin/neonvm-daemon",
	}
	_, err := os.Stat(filepath.Join(rootfs, "usr/lib/postgresql/15/bin/postgres"))
	hasPostgres := err == nil
	if hasPostgres {
		inittab = append(inittab, "::respawn:/neonvm/bin/postgres-start")
	}
	installed := []struct{ name, src string }{
		{"busybox", bins.Busybox}, {"neonvm-daemon", bins.Daemon},
		{"vm-monitor", bins.Monitor}, {"guest-metrics", bins.Metrics},
	}
	for _, b := range installed {
		if b.src == "" {
			if b.name == "busybox" || b.name == "neonvm-daemon" {
				return fmt.Errorf("no %s given: the guest cannot boot without it", b.name)
			}
			continue
		}
		data, err := os.ReadFile(b.src)
		if err != nil {
			return fmt.Errorf("read %s: %w", b.src, err)
		}
		if err := os.WriteFile(filepath.Join(bin, b.name), data, 0o755); err != nil {
			return fmt.Errorf("install /neonvm/bin/%s: %w", b.name, err)
		}
		switch b.name {
		case "vm-monitor":
			// Metrics on the guest's loopback only (read over the exec channel).
			line := "::respawn:/neonvm/bin/vm-monitor --cgroup=neon-postgres --metrics-addr=127.0.0.1:9101"
			if hasPostgres {
				// busybox init runs a line holding quotes through sh -c.
				line += " --pgconnstr='" + MonitorPgConnstr + "'"
			}
			inittab = append(inittab, line)
		case "guest-metrics":
			inittab = append(inittab, "::respawn:/neonvm/bin/guest-metrics")
		}
	}
	inittab = append(inittab, "::shutdown:/neonvm/bin/vmshutdown", "")
	init := filepath.Join(bin, "init")
	_ = os.Remove(init)
	if err := os.Symlink("busybox", init); err != nil {
		return fmt.Errorf("link /neonvm/bin/init: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(rootfs, "etc", "inittab"), []byte(strings.Join(inittab, "\n")), 0o644)
}

// rootUUID is the root filesystem's UUID in every guest disk.
const rootUUID = "6e656f6e-766d-4d00-8000-766d7363616c"

// BuildDisk makes a qcow2 disk of size (e.g. "2G") holding rootfs as an
// ext4 filesystem labelled vmroot, without mounting anything.
func BuildDisk(ctx context.Context, rootfs, out, size string) error {
	raw := out + ".raw"
	defer os.Remove(raw)
	_ = os.Remove(raw)
	// A fixed UUID and hash seed, with the fake time run() sets, keep the
	// filesystem's own metadata from varying between builds.
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "vmroot", "-U", rootUUID,
		"-E", "hash_seed="+rootUUID, "-d", rootfs, raw, size); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := run(ctx, "qemu-img", "convert", "-O", "qcow2", raw, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// mkfs.ext4 stamps the current time unless told otherwise.
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1", "SOURCE_DATE_EPOCH=0")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return nil
}
