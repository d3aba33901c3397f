package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/files"
)

// DefaultDiskSyncInterval is how often watched disks are compared with the
// guest's copy (NeonVM's runner: every 30 s).
const DefaultDiskSyncInterval = 30 * time.Second

// DiskSyncer keeps the guest's copies of watched ConfigMap/Secret disks
// equal to what the kubelet has put in the pod: it compares checksums with
// neonvm-daemon and sends the files when they differ.
type DiskSyncer struct {
	Disks  []vmv1.Disk
	Mounts string // the pod's /vm/mounts
	Daemon string // neonvm-daemon's base URL
	Client *http.Client
	Log    *slog.Logger
}

// NewDiskSyncer returns a syncer for spec's watched disks, or nil when it
// has none.
func NewDiskSyncer(spec *vmv1.VirtualMachineSpec, mounts, daemonAddr string, log *slog.Logger) *DiskSyncer {
	var watched []vmv1.Disk
	for _, d := range spec.Disks {
		if Watched(d) {
			watched = append(watched, d)
		}
	}
	if len(watched) == 0 {
		return nil
	}
	return &DiskSyncer{Disks: watched, Mounts: mounts, Daemon: "http://" + daemonAddr,
		Client: &http.Client{Timeout: 10 * time.Second}, Log: log}
}

// Run syncs every interval until ctx ends. Failures (the guest still
// booting, say) are logged and retried on the next round.
func (s *DiskSyncer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := map[string]bool{}
	for {
		for _, d := range s.Disks {
			changed, err := s.Sync(ctx, d)
			switch {
			case err != nil && !failing[d.Name]:
				s.Log.Warn("watched disk not synced; retrying", "disk", d.Name, "error", err.Error())
				failing[d.Name] = true
			case err == nil:
				if failing[d.Name] {
					s.Log.Info("watched disk syncing again", "disk", d.Name)
				}
				failing[d.Name] = false
				if changed {
					s.Log.Info("watched disk updated in the guest", "disk", d.Name, "mountPath", d.MountPath)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sync makes the guest's copy of d equal to the pod's and says whether it
// had to send anything.
func (s *DiskSyncer) Sync(ctx context.Context, d vmv1.Disk) (bool, error) {
	local, err := files.Read(filepath.Join(s.Mounts, d.MountPath))
	if err != nil {
		return false, fmt.Errorf("read the pod's copy: %w", err)
	}
	want := files.Checksum(local)
	url := s.Daemon + "/files" + d.MountPath
	have, err := s.do(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	if strings.TrimSpace(have) == want {
		return false, nil
	}
	body := make(map[string]files.File, len(local))
	for name, data := range local {
		body[name] = files.File{Data: data}
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return false, fmt.Errorf("encode %s: %w", d.MountPath, err)
	}
	if _, err := s.do(ctx, http.MethodPut, url, raw); err != nil {
		return false, err
	}
	return true, nil
}

func (s *DiskSyncer) do(ctx context.Context, method, url string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("neonvm-daemon %s %s: %w", method, url, err)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return "", fmt.Errorf("neonvm-daemon %s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("neonvm-daemon %s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(msg)))
	}
	return string(msg), nil
}
