package runner

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/daemon"
	"github.com/vmscale/vmscale/neonvm/files"
)

// The runner's syncer against the guest daemon's real handler: a change in
// the pod's copy reaches the guest's, and nothing is sent when they agree.
func TestDiskSyncerAgainstDaemon(t *testing.T) {
	pod, guest := t.TempDir(), t.TempDir()
	mount := "/etc/secret"
	podDir, guestDir := filepath.Join(pod, mount), filepath.Join(guest, mount)
	for _, d := range []string{podDir, guestDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v1 := map[string][]byte{"password": []byte("one")}
	// The kubelet's copy in the pod, and the guest's first version (the
	// init's copy of the disk).
	if err := files.Write(podDir, v1, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if err := files.Write(guestDir, v1, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&daemon.FilesServer{Root: guest})
	defer srv.Close()
	spec := &vmv1.VirtualMachineSpec{Disks: []vmv1.Disk{
		{Name: "secret", MountPath: mount, Watch: ptr.To(true), DiskSource: vmv1.DiskSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
		{Name: "unwatched", MountPath: "/etc/other", DiskSource: vmv1.DiskSource{Secret: &corev1.SecretVolumeSource{SecretName: "o"}}},
	}}
	s := NewDiskSyncer(spec, pod, strings.TrimPrefix(srv.URL, "http://"), slog.Default())
	if s == nil || len(s.Disks) != 1 {
		t.Fatalf("syncer for %v", s)
	}
	ctx := context.Background()
	if changed, err := s.Sync(ctx, s.Disks[0]); err != nil || changed {
		t.Fatalf("equal copies: changed=%v err=%v", changed, err)
	}
	v2 := map[string][]byte{"password": []byte("two"), "user": []byte("app")}
	if err := files.Write(podDir, v2, time.Unix(2, 0)); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.Sync(ctx, s.Disks[0]); err != nil || !changed {
		t.Fatalf("after a change: changed=%v err=%v", changed, err)
	}
	got, err := files.Read(guestDir)
	if err != nil || files.Checksum(got) != files.Checksum(v2) {
		t.Fatalf("guest copy %q (%v)", got, err)
	}
	if changed, err := s.Sync(ctx, s.Disks[0]); err != nil || changed {
		t.Fatalf("after syncing: changed=%v err=%v", changed, err)
	}
	if NewDiskSyncer(&vmv1.VirtualMachineSpec{}, pod, "x", slog.Default()) != nil {
		t.Error("a syncer for a VM without watched disks")
	}
}
