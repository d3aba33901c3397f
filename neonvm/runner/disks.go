package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/qemu"
)

// Dirs are where the runner finds and puts disks.
type Dirs struct {
	// Images holds the disks QEMU opens (/vm/images in a pod).
	Images string
	// Mounts holds the contents of configMap/secret disks, at
	// Mounts/<mountPath> (/vm/mounts in a pod, from the pod's volumes).
	Mounts string
	// BaseRootDisk is the root disk image. In a pod the init container
	// has put it at Images/rootdisk.qcow2; a local runner is given a
	// shared base. Either way the guest writes to a copy-on-write overlay
	// of it (rootOverlay).
	BaseRootDisk string
}

// RootDiskBaseName is the root disk image the init container delivered,
// once the runner has moved it under the guest's overlay.
const RootDiskBaseName = "rootdisk-base.qcow2"

// rootOverlay returns Images/rootdisk.qcow2, a qcow2 overlay on the root
// disk image that the guest writes to, and never writes the image itself.
//
// Live migration copies the guest's disk with it (QEMU's block
// migration). With an overlay on an image the target has too, the
// incremental copy is only what the guest wrote, not the whole image
// (vm-postgres on the local cluster: 1.4 s instead of 4.9 s), and the image
// stays as it was delivered (docs/neonvm.md, Live migration).
//
// In a pod the init container leaves the image at Images/rootdisk.qcow2:
// the first start moves it to Images/rootdisk-base.qcow2; a restarted
// runner container (same pod, same disks) keeps the overlay it finds, so
// the guest's disk survives as it would a reboot.
func rootOverlay(ctx context.Context, d Dirs) (string, error) {
	root := filepath.Join(d.Images, "rootdisk.qcow2")
	base := abs(d.BaseRootDisk)
	if base == abs(root) {
		base = filepath.Join(d.Images, RootDiskBaseName)
		if _, err := os.Stat(base); err == nil {
			if _, err := os.Stat(root); err == nil {
				return root, nil
			}
		} else if err := os.Rename(root, base); err != nil {
			return "", fmt.Errorf("root disk: move the image under an overlay: %w", err)
		}
	} else {
		_ = os.Remove(root)
	}
	if err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, root); err != nil {
		return "", fmt.Errorf("root disk overlay on %s: %w", base, err)
	}
	return root, nil
}

const bb = "/neonvm/bin/busybox"

// PrepareDisks makes every disk the spec asks for and returns the root disk
// and the others in QEMU's order: the runtime disk, swap, then spec.disks.
func PrepareDisks(ctx context.Context, spec *vmv1.VirtualMachineSpec, d Dirs) (string, []qemu.Disk, error) {
	if err := os.MkdirAll(d.Images, 0o755); err != nil {
		return "", nil, fmt.Errorf("images directory: %w", err)
	}
	root, err := rootOverlay(ctx, d)
	if err != nil {
		return "", nil, err
	}
	if want := spec.Guest.RootDisk.Size.Value(); want > 0 {
		have, err := virtualSize(ctx, root)
		if err != nil {
			return "", nil, err
		}
		if want > have {
			if err := run(ctx, "qemu-img", "resize", "-q", root, strconv.FormatInt(want, 10)); err != nil {
				return "", nil, fmt.Errorf("spec.guest.rootDisk.size: grow the root disk: %w", err)
			}
		}
	}

	var disks []qemu.Disk
	iso, err := runtimeISO(ctx, spec, d.Images)
	if err != nil {
		return "", nil, fmt.Errorf("runtime disk: %w", err)
	}
	disks = append(disks, qemu.Disk{ID: "runtime", Path: iso, CDROM: true})

	if s := spec.Guest.Settings; s != nil && s.Swap != nil && !s.Swap.IsZero() {
		p, err := swapDisk(ctx, d.Images, s.Swap.Value())
		if err != nil {
			return "", nil, fmt.Errorf("spec.guest.settings.swap: %w", err)
		}
		disks = append(disks, qemu.Disk{ID: "swapdisk", Path: p, Discard: true})
	}
	for i, disk := range spec.Disks {
		field := fmt.Sprintf("spec.disks[%d] (%s)", i, disk.Name)
		switch {
		case disk.EmptyDisk != nil:
			p, err := emptyDisk(ctx, d.Images, disk)
			if err != nil {
				return "", nil, fmt.Errorf("%s: %w", field, err)
			}
			disks = append(disks, qemu.Disk{ID: disk.Name, Path: p, Discard: disk.EmptyDisk.Discard})
		case disk.ConfigMap != nil || disk.Secret != nil:
			src := filepath.Join(d.Mounts, disk.MountPath)
			if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
				return "", nil, fmt.Errorf("%s: its contents are not at %s", field, src)
			}
			p := filepath.Join(d.Images, disk.Name+".iso")
			if err := run(ctx, "genisoimage", "-quiet", "-R", "-J", "-V", disk.Name, "-o", p, src); err != nil {
				return "", nil, fmt.Errorf("%s: %w", field, err)
			}
			disks = append(disks, qemu.Disk{ID: disk.Name, Path: p, CDROM: true})
		case disk.Tmpfs != nil:
			// Mounted inside the guest by mounts.sh.
		}
	}
	return root, disks, nil
}

// chownDisks gives the root disk (the overlay and the image under it) and
// every writable disk to the user QEMU runs as.
func chownDisks(qemuUser, root string, disks []qemu.Disk) error {
	u, err := user.Lookup(qemuUser)
	if err != nil {
		return fmt.Errorf("QEMU's user: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("QEMU's user %s has uid %q gid %q: not numbers", qemuUser, u.Uid, u.Gid)
	}
	paths := []string{root, filepath.Join(filepath.Dir(root), RootDiskBaseName)}
	for _, d := range disks {
		if !d.CDROM {
			paths = append(paths, d.Path)
		}
	}
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("give %s to QEMU's user %s: %w", p, qemuUser, err)
		}
	}
	return nil
}

func emptyDisk(ctx context.Context, dir string, disk vmv1.Disk) (string, error) {
	size := disk.EmptyDisk.Size.Value()
	if size <= 0 {
		return "", fmt.Errorf("emptyDisk.size must be above 0")
	}
	out := filepath.Join(dir, disk.Name+".qcow2")
	if _, err := os.Stat(out); err == nil {
		return out, nil // kept across runner restarts in the pod
	}
	raw := out + ".raw"
	defer os.Remove(raw)
	if err := sparseFile(raw, size); err != nil {
		return "", err
	}
	args := []string{"-q", "-F", "-L", disk.Name, "-b", "4096"}
	if disk.EmptyDisk.EnableQuotas {
		args = append(args, "-O", "quota,project", "-E", "quotatype=prjquota")
	}
	if err := run(ctx, "mkfs.ext4", append(args, raw)...); err != nil {
		return "", err
	}
	if err := run(ctx, "qemu-img", "convert", "-q", "-O", "qcow2", "-o", "cluster_size=2M,lazy_refcounts=on", raw, out); err != nil {
		return "", err
	}
	return out, nil
}

func swapDisk(ctx context.Context, dir string, size int64) (string, error) {
	out := filepath.Join(dir, "swapdisk.qcow2")
	raw := out + ".raw"
	defer os.Remove(raw)
	if err := sparseFile(raw, size); err != nil {
		return "", err
	}
	if err := run(ctx, "mkswap", "-L", "swapdisk", raw); err != nil {
		return "", err
	}
	return out, run(ctx, "qemu-img", "convert", "-q", "-O", "qcow2", raw, out)
}

// sparseFile creates an empty file of size bytes, taking no disk space.
func sparseFile(path string, size int64) error {
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return err
	}
	return os.Truncate(path, size)
}

// runtimeISO writes the runtime disk (label vmruntime): sysctl.conf,
// command.sh, args.sh, env.sh and mounts.sh, which the guest's init applies.
func runtimeISO(ctx context.Context, spec *vmv1.VirtualMachineSpec, dir string) (string, error) {
	src := filepath.Join(dir, "runtime")
	_ = os.RemoveAll(src)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	files := RuntimeFiles(spec)
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o755); err != nil {
			return "", err
		}
	}
	out := filepath.Join(dir, "runtime.iso")
	if err := run(ctx, "genisoimage", "-quiet", "-R", "-J", "-V", "vmruntime", "-o", out, src); err != nil {
		return "", err
	}
	return out, nil
}

// RuntimeFiles are the runtime disk's files for spec.
func RuntimeFiles(spec *vmv1.VirtualMachineSpec) map[string]string {
	g := spec.Guest
	sysctl := []string{"kernel.core_pattern=core", "kernel.core_uses_pid=1"}
	if g.Settings != nil {
		sysctl = append(sysctl, g.Settings.Sysctl...)
	}
	var env strings.Builder
	for _, e := range g.Env {
		fmt.Fprintf(&env, "export %s=%s\n", e.Name, shellQuote(e.Value))
	}
	var mounts strings.Builder
	mounts.WriteString("#!/neonvm/bin/busybox sh\n# Mounts the VM's disks where the spec says (run by the guest's init).\n")
	for _, d := range spec.Disks {
		if d.MountPath == "" {
			continue
		}
		fmt.Fprintf(&mounts, "%s mkdir -p %s\n", bb, shellQuote(d.MountPath))
		switch {
		case d.Tmpfs != nil:
			fmt.Fprintf(&mounts, "%s mount -t tmpfs -o size=%d tmpfs %s\n", bb, d.Tmpfs.Size.Value(), shellQuote(d.MountPath))
		case Watched(d):
			// A copy on tmpfs that neonvm-daemon keeps current (PUT
			// /files/<mountPath>); the disk itself is the first version.
			src := shellQuote("/neonvm/disks/" + d.Name)
			fmt.Fprintf(&mounts, "%s mkdir -p %s\n", bb, src)
			fmt.Fprintf(&mounts, "%s mount -o ro \"$(%s findfs LABEL=%s)\" %s\n", bb, bb, d.Name, src)
			fmt.Fprintf(&mounts, "%s mount -t tmpfs -o size=16m,mode=0755 %s %s\n", bb, d.Name, shellQuote(d.MountPath))
			fmt.Fprintf(&mounts, "%s cp -a %s/. %s/\n", bb, src, shellQuote(d.MountPath))
		default:
			opts := "rw"
			if d.ConfigMap != nil || d.Secret != nil || (d.ReadOnly != nil && *d.ReadOnly) {
				opts = "ro"
			}
			fmt.Fprintf(&mounts, "%s mount -o %s \"$(%s findfs LABEL=%s)\" %s\n", bb, opts, bb, d.Name, shellQuote(d.MountPath))
		}
	}
	if g.Settings != nil && g.Settings.Swap != nil {
		fmt.Fprintf(&mounts, "%s swapon \"$(%s findfs LABEL=swapdisk)\"\n", bb, bb)
	}
	return map[string]string{
		"sysctl.conf": strings.Join(sysctl, "\n") + "\n",
		"command.sh":  "#!/neonvm/bin/busybox sh\n" + shellWords(g.Command) + "\n",
		"args.sh":     "#!/neonvm/bin/busybox sh\n" + shellWords(g.Args) + "\n",
		"env.sh":      "#!/neonvm/bin/busybox sh\n" + env.String(),
		"mounts.sh":   mounts.String(),
	}
}

// Watched says whether disk is a ConfigMap or Secret disk kept in sync
// while the guest runs.
func Watched(d vmv1.Disk) bool {
	return d.Watch != nil && *d.Watch && (d.ConfigMap != nil || d.Secret != nil)
}

func shellWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func virtualSize(ctx context.Context, path string) (int64, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", path).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s answered %q: %w", path, out, err)
	}
	return info.VirtualSize, nil
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
