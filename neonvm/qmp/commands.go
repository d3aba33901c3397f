package qmp

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// VirtioMemID is the id of the guest's virtio-mem device on the QEMU command
// line (neonvm/qemu).
const VirtioMemID = "vm0"

// CPUProps place a vCPU in the topology.
type CPUProps struct {
	NodeID   *int `json:"node-id,omitempty"`
	SocketID *int `json:"socket-id,omitempty"`
	CoreID   *int `json:"core-id,omitempty"`
	ThreadID *int `json:"thread-id,omitempty"`
}

// HotpluggableCPU is one entry of query-hotpluggable-cpus: a vCPU slot,
// plugged when QOMPath is set.
type HotpluggableCPU struct {
	Type       string   `json:"type"`
	VCPUsCount int      `json:"vcpus-count"`
	Props      CPUProps `json:"props"`
	QOMPath    string   `json:"qom-path,omitempty"`
}

// Plugged reports whether a vCPU occupies the slot.
func (c HotpluggableCPU) Plugged() bool { return c.QOMPath != "" }

// Hotplugged reports whether the vCPU was added by device_add (and so can be
// removed), as opposed to a boot vCPU.
func (c HotpluggableCPU) Hotplugged() bool {
	return strings.Contains(c.QOMPath, "/machine/peripheral/")
}

// QueryHotpluggableCPUs lists every vCPU slot.
func (c *Client) QueryHotpluggableCPUs(ctx context.Context) ([]HotpluggableCPU, error) {
	var out []HotpluggableCPU
	err := c.Execute(ctx, "query-hotpluggable-cpus", nil, &out)
	return out, err
}

// PluggedCPUs counts the slots that hold a vCPU.
func PluggedCPUs(slots []HotpluggableCPU) int {
	n := 0
	for _, s := range slots {
		if s.Plugged() {
			n++
		}
	}
	return n
}

// SetCPUs plugs or unplugs vCPUs until want are plugged, all in this one
// call (NeonVM does one per reconcile). Plugging fills the lowest empty
// cores; unplugging removes the highest hot-plugged ones. It returns the
// device ids it added or asked to remove. Removal completes when the guest
// releases the vCPU: poll QueryHotpluggableCPUs for it.
func (c *Client) SetCPUs(ctx context.Context, want int) ([]string, error) {
	slots, err := c.QueryHotpluggableCPUs(ctx)
	if err != nil {
		return nil, err
	}
	if want < 1 || want > len(slots) {
		return nil, fmt.Errorf("set vCPUs to %d: the VM has %d slots", want, len(slots))
	}
	sort.Slice(slots, func(i, j int) bool { return coreID(slots[i]) < coreID(slots[j]) })
	have := PluggedCPUs(slots)
	var ids []string
	switch {
	case want > have:
		for _, s := range slots {
			if have == want {
				break
			}
			if s.Plugged() {
				continue
			}
			id := fmt.Sprintf("cpu%d", coreID(s))
			args := map[string]any{"id": id, "driver": s.Type}
			for k, v := range map[string]*int{"socket-id": s.Props.SocketID, "core-id": s.Props.CoreID, "thread-id": s.Props.ThreadID, "node-id": s.Props.NodeID} {
				if v != nil {
					args[k] = *v
				}
			}
			if err := c.Execute(ctx, "device_add", args, nil); err != nil {
				return ids, fmt.Errorf("plug vCPU %s (%d of %d): %w", id, have+1, want, err)
			}
			ids = append(ids, id)
			have++
		}
	case want < have:
		for i := len(slots) - 1; i >= 0 && have > want; i-- {
			s := slots[i]
			if !s.Hotplugged() {
				continue
			}
			if err := c.Execute(ctx, "device_del", map[string]any{"id": s.QOMPath}, nil); err != nil {
				return ids, fmt.Errorf("unplug vCPU %s: %w", s.QOMPath, err)
			}
			ids = append(ids, s.QOMPath)
			have--
		}
		if have > want {
			return ids, fmt.Errorf("unplug to %d vCPUs: only %d were hot-plugged, %d boot vCPUs remain", want, len(ids), have)
		}
	}
	return ids, nil
}

func coreID(s HotpluggableCPU) int {
	if s.Props.CoreID == nil {
		return 0
	}
	return *s.Props.CoreID
}

// MemorySizeSummary is query-memory-size-summary, in bytes.
type MemorySizeSummary struct {
	BaseMemory    int64 `json:"base-memory"`
	PluggedMemory int64 `json:"plugged-memory"`
}

// Total is the guest's memory: boot memory plus plugged memory.
func (m MemorySizeSummary) Total() int64 { return m.BaseMemory + m.PluggedMemory }

// QueryMemorySizeSummary reports the guest's memory.
func (c *Client) QueryMemorySizeSummary(ctx context.Context) (MemorySizeSummary, error) {
	var out MemorySizeSummary
	err := c.Execute(ctx, "query-memory-size-summary", nil, &out)
	return out, err
}

// VirtioMemRequestedSize is the size the virtio-mem device was asked for.
func (c *Client) VirtioMemRequestedSize(ctx context.Context) (int64, error) {
	return c.qomGetInt(ctx, VirtioMemID, "requested-size")
}

// VirtioMemPluggedSize is the memory the guest's driver has plugged so far.
func (c *Client) VirtioMemPluggedSize(ctx context.Context) (int64, error) {
	return c.qomGetInt(ctx, VirtioMemID, "size")
}

// SetVirtioMemRequestedSize asks the guest to plug or unplug memory until
// the device holds bytes (a multiple of its block size).
func (c *Client) SetVirtioMemRequestedSize(ctx context.Context, bytes int64) error {
	return c.Execute(ctx, "qom-set", map[string]any{"path": VirtioMemID, "property": "requested-size", "value": bytes}, nil)
}

func (c *Client) qomGetInt(ctx context.Context, path, property string) (int64, error) {
	var out int64
	err := c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": property}, &out)
	return out, err
}

// Status is query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus reports whether the guest runs ("running", "paused",
// "inmigrate", "postmigrate", "shutdown", ...).
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var out Status
	err := c.Execute(ctx, "query-status", nil, &out)
	return out, err
}

// QueryKVM reports whether QEMU runs the guest with KVM (false: TCG).
func (c *Client) QueryKVM(ctx context.Context) (bool, error) {
	var out struct {
		Enabled bool `json:"enabled"`
	}
	err := c.Execute(ctx, "query-kvm", nil, &out)
	return out.Enabled, err
}

// Stop pauses the guest's vCPUs.
func (c *Client) Stop(ctx context.Context) error {
	return c.Execute(ctx, "stop", nil, nil)
}

// Cont resumes a paused guest.
func (c *Client) Cont(ctx context.Context) error {
	return c.Execute(ctx, "cont", nil, nil)
}

// SystemPowerdown presses the guest's ACPI power button.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit stops QEMU at once.
func (c *Client) Quit(ctx context.Context) error {
	return c.Execute(ctx, "quit", nil, nil)
}
