package api

import (
	"fmt"
)

// PluginProtoVersion numbers the agent↔scheduler-plugin protocol. The numbers
// are Neon's: v1.0 is 1 and each release adds one.
type PluginProtoVersion uint32

// The protocol versions, oldest first. 0 is invalid.
const (
	PluginProtoV1_0 PluginProtoVersion = iota + 1
	PluginProtoV1_1
	PluginProtoV2_0
	PluginProtoV2_1
	PluginProtoV3_0
	PluginProtoV4_0
	PluginProtoV5_0

	// CurrentPluginProto is the only version vmscale speaks.
	CurrentPluginProto = PluginProtoV5_0
)

var pluginProtoNames = [...]string{"", "v1.0", "v1.1", "v2.0", "v2.1", "v3.0", "v4.0", "v5.0"}

// String is "v5.0" for a known version, and names invalid ones the way
// Neon's logs do.
func (v PluginProtoVersion) String() string {
	switch {
	case v == 0:
		return "<invalid: zero>"
	case int(v) < len(pluginProtoNames):
		return pluginProtoNames[v]
	default:
		return fmt.Sprintf("<unknown = %s + %d>", CurrentPluginProto, v-CurrentPluginProto)
	}
}

// PodRef names a pod: the runner pod of the VM an agent scales.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// AgentRequest is what the autoscaler-agent POSTs to the plugin: the total it
// wants for a VM (Resources), the permit it last received (LastPermit, used
// to recover after a restart) and the VM's load.
type AgentRequest struct {
	ProtoVersion PluginProtoVersion `json:"protoVersion"`
	Pod          PodRef             `json:"pod"`
	// ComputeUnit is the agent's scaling step; required since v4.0.
	ComputeUnit *Resources `json:"computeUnit"`
	Resources   Resources  `json:"resources"`
	LastPermit  *Resources `json:"lastPermit"`
	Metrics     *Metrics   `json:"metrics"`
}

// Metrics are the VM's load as the agent saw it. v5.0 sends only the
// 1-minute load average; older agents also sent the other two.
type Metrics struct {
	LoadAverage1Min  float32  `json:"loadAvg1M"`
	LoadAverage5Min  *float32 `json:"loadAvg5M,omitempty"`
	MemoryUsageBytes *float32 `json:"memoryUsageBytes,omitempty"`
}

// Validate checks what the plugin needs of a request, returning an error
// whose text is the reply to the agent (docs/protocols.md#permit-protocol).
func (r *AgentRequest) Validate() error {
	if r.ProtoVersion != CurrentPluginProto {
		return fmt.Errorf("protocol version mismatch: need %s but got %s", CurrentPluginProto, r.ProtoVersion)
	}
	if r.ComputeUnit == nil || r.ComputeUnit.HasZero() {
		cu := "null"
		if r.ComputeUnit != nil {
			cu = r.ComputeUnit.String()
		}
		return fmt.Errorf("computeUnit fields must be non-zero, got %s", cu)
	}
	if r.Pod.Name == "" || r.Pod.Namespace == "" {
		return fmt.Errorf("pod namespace and name are required, got %q", r.Pod.String())
	}
	return nil
}

// PluginResponse is the plugin's reply: the amount the VM may now use.
type PluginResponse struct {
	Permit Resources `json:"permit"`
	// Migrate, when present, tells the agent the VM is about to migrate and
	// should not scale. vmscale's plugin, like Neon's current one, never
	// sends it; it is kept for decoding older replies.
	Migrate *MigrateResponse `json:"migrate,omitempty"`
}

// MigrateResponse carries no fields; its presence is the message.
type MigrateResponse struct{}

// MaxAgentRequestBytes is the largest request body the plugin reads.
const MaxAgentRequestBytes = 1024
