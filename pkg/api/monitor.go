package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// The agent↔vm-monitor protocol: JSON in websocket text frames on
// ws://<vm>:10301/monitor. The two directions frame messages differently:
//
//   - agent → monitor nests the payload: {"content":{…},"type":T,"id":n}
//     (the agent writes the keys in that order and ends the frame with "\n");
//   - monitor → agent flattens it:        {"type":T,…fields…,"id":n}.
//
// The agent numbers its messages with even ids, the monitor with odd ones;
// a reply carries the id of the request it answers.

// MonitorProtoVersion is a version of the agent↔monitor protocol. Only v1.0
// has ever existed.
type MonitorProtoVersion uint32

// MonitorProtoV1_0 is protocol v1.0, the one version both sides speak.
const MonitorProtoV1_0 MonitorProtoVersion = 1

// String is the version as Neon prints it ("v1.0").
func (v MonitorProtoVersion) String() string {
	if v == MonitorProtoV1_0 {
		return "v1.0"
	}
	return "<unknown MonitorProtoVersion " + strconv.FormatUint(uint64(v), 10) + ">"
}

// VersionRange is the first message of a connection: the agent's supported
// versions, {"min":1,"max":1}.
type VersionRange[V ~uint32] struct {
	Min V `json:"min"`
	Max V `json:"max"`
}

// LatestSharedVersion is the highest version both ranges hold, if any.
func (r VersionRange[V]) LatestSharedVersion(other VersionRange[V]) (V, bool) {
	hi := min(r.Max, other.Max)
	if hi < max(r.Min, other.Min) {
		return 0, false
	}
	return hi, true
}

// String writes the range as the monitor's handshake error does: "1" for a
// single version, "2 to 3" otherwise.
func (r VersionRange[V]) String() string {
	if r.Min == r.Max {
		return strconv.FormatUint(uint64(r.Min), 10)
	}
	return strconv.FormatUint(uint64(r.Min), 10) + " to " + strconv.FormatUint(uint64(r.Max), 10)
}

// DecodeVersionRange reads the agent's handshake message. Both bounds are
// required and min may not exceed max.
func DecodeVersionRange(data []byte) (VersionRange[MonitorProtoVersion], error) {
	var r VersionRange[MonitorProtoVersion]
	fields, err := objectFields(data)
	if err != nil {
		return r, fmt.Errorf("version range: %w", err)
	}
	if err := field(fields, "min", &r.Min); err != nil {
		return r, fmt.Errorf("version range: %w", err)
	}
	if err := field(fields, "max", &r.Max); err != nil {
		return r, fmt.Errorf("version range: %w", err)
	}
	if r.Min > r.Max {
		return r, fmt.Errorf("version range: min %d is above max %d", r.Min, r.Max)
	}
	return r, nil
}

// MonitorProtocolResponse is the monitor's answer to the handshake: the
// chosen version, {"version":1}, or why there is none, {"error":"…"}.
type MonitorProtocolResponse struct {
	Version MonitorProtoVersion `json:"version,omitempty"`
	Error   *string             `json:"error,omitempty"`
}

// DecodeMonitorProtocolResponse reads the handshake answer as the agent does:
// an error wins; otherwise the version must be set.
func DecodeMonitorProtocolResponse(data []byte) (MonitorProtocolResponse, error) {
	var r MonitorProtocolResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("protocol response: %w", err)
	}
	if r.Error == nil && r.Version == 0 {
		return r, errors.New("protocol response: neither version nor error set")
	}
	return r, nil
}

// Allocation is an amount of resources as the monitor sees it: vCPUs as a
// float and memory in bytes. It is built from Resources as cpu = milli/1000.
type Allocation struct {
	Cpu float64 `json:"cpu"`
	Mem uint64  `json:"mem"`
}

// MessageType is a message's "type" on the wire.
type MessageType string

// The message types of protocol v1.0.
const (
	TypeUpscaleNotification MessageType = "UpscaleNotification" // agent → monitor
	TypeUpscaleConfirmation MessageType = "UpscaleConfirmation" // monitor → agent, reply
	TypeUpscaleRequest      MessageType = "UpscaleRequest"      // monitor → agent, unsolicited
	TypeDownscaleRequest    MessageType = "DownscaleRequest"    // agent → monitor
	TypeDownscaleResult     MessageType = "DownscaleResult"     // monitor → agent, reply
	TypeHealthCheck         MessageType = "HealthCheck"         // both: request and reply
	TypeInvalidMessage      MessageType = "InvalidMessage"      // both, only logged
	TypeInternalError       MessageType = "InternalError"       // both, a failed request
)

// Message is one of the protocol's payloads.
type Message interface {
	MessageType() MessageType
}

// UpscaleNotification tells the monitor it has been given more resources.
type UpscaleNotification struct {
	Granted Allocation `json:"granted"`
}

// UpscaleConfirmation acknowledges an UpscaleNotification.
type UpscaleConfirmation struct{}

// UpscaleRequest asks the agent for more memory. It has no reply.
type UpscaleRequest struct{}

// DownscaleRequest asks the monitor whether the VM may shrink to Target.
type DownscaleRequest struct {
	Target Allocation `json:"target"`
}

// DownscaleResult answers a DownscaleRequest. The keys are capitalised on
// the wire ("Ok", "Status"), hence no tags.
type DownscaleResult struct {
	Ok     bool
	Status string
}

// HealthCheck is the agent's liveness probe and the monitor's echo of it.
type HealthCheck struct{}

// InvalidMessage says a received message could not be understood.
type InvalidMessage struct {
	Error string `json:"error"`
}

// InternalError says a request failed on the sender's side.
type InternalError struct {
	Error string `json:"error"`
}

func (UpscaleNotification) MessageType() MessageType { return TypeUpscaleNotification }
func (UpscaleConfirmation) MessageType() MessageType { return TypeUpscaleConfirmation }
func (UpscaleRequest) MessageType() MessageType      { return TypeUpscaleRequest }
func (DownscaleRequest) MessageType() MessageType    { return TypeDownscaleRequest }
func (DownscaleResult) MessageType() MessageType     { return TypeDownscaleResult }
func (HealthCheck) MessageType() MessageType         { return TypeHealthCheck }
func (InvalidMessage) MessageType() MessageType      { return TypeInvalidMessage }
func (InternalError) MessageType() MessageType       { return TypeInternalError }

// MoreResources is what the agent reads an UpscaleRequest as.
type MoreResources struct {
	Cpu    bool `json:"cpu"`
	Memory bool `json:"memory"`
}

// Wanted is what an UpscaleRequest asks for: the monitor only ever watches
// memory.
func (UpscaleRequest) Wanted() MoreResources { return MoreResources{Cpu: false, Memory: true} }

// Envelope is a decoded message with its id.
type Envelope struct {
	ID      uint64
	Message Message
}

// The directions a message type may travel in.
var (
	toMonitorTypes = map[MessageType]bool{
		TypeUpscaleNotification: true, TypeDownscaleRequest: true, TypeHealthCheck: true,
		TypeInvalidMessage: true, TypeInternalError: true,
	}
	toAgentTypes = map[MessageType]bool{
		TypeUpscaleConfirmation: true, TypeUpscaleRequest: true, TypeDownscaleResult: true,
		TypeHealthCheck: true, TypeInvalidMessage: true, TypeInternalError: true,
	}
)

// EncodeToMonitor writes a message as the agent sends it:
// {"content":{…},"type":T,"id":n}, without the trailing newline the agent
// adds to each frame.
func EncodeToMonitor(id uint64, m Message) ([]byte, error) {
	t := m.MessageType()
	if !toMonitorTypes[t] {
		return nil, fmt.Errorf("encode %s: the agent never sends it", t)
	}
	content, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	var b bytes.Buffer
	b.WriteString(`{"content":`)
	b.Write(content)
	b.WriteString(`,"type":`)
	writeString(&b, string(t), true)
	b.WriteString(`,"id":`)
	b.WriteString(strconv.FormatUint(id, 10))
	b.WriteByte('}')
	return b.Bytes(), nil
}

// EncodeToAgent writes a message as the monitor sends it, fields flattened:
// {"type":T,…fields…,"id":n}. Like Neon's monitor, it does not escape <, >
// and & in strings.
func EncodeToAgent(id uint64, m Message) ([]byte, error) {
	t := m.MessageType()
	if !toAgentTypes[t] {
		return nil, fmt.Errorf("encode %s: the monitor never sends it", t)
	}
	var fields bytes.Buffer
	enc := json.NewEncoder(&fields)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	// The payload is an object: drop its braces (and the encoder's newline).
	inner := bytes.TrimSpace(fields.Bytes())
	inner = inner[1 : len(inner)-1]
	var b bytes.Buffer
	b.WriteString(`{"type":`)
	writeString(&b, string(t), false)
	if len(inner) > 0 {
		b.WriteByte(',')
		b.Write(inner)
	}
	b.WriteString(`,"id":`)
	b.WriteString(strconv.FormatUint(id, 10))
	b.WriteByte('}')
	return b.Bytes(), nil
}

func writeString(b *bytes.Buffer, s string, escapeHTML bool) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s) // a string always encodes
	b.Truncate(b.Len() - 1)
}

// UnknownTypeError is a message whose type the receiver does not know (or
// that never travels in that direction).
type UnknownTypeError struct{ Type string }

func (e *UnknownTypeError) Error() string {
	return fmt.Sprintf("Received message of unknown type: %q", e.Type)
}

// DecodeFromAgent reads a message as the monitor receives it. It is as
// strict as Neon's monitor: "type", "content" and "id" are required, field
// names are matched exactly, every field of the payload must be present,
// unknown fields are ignored. When the message is rejected but its id could
// be read, the returned Envelope carries that id so a reply can use it.
func DecodeFromAgent(data []byte) (Envelope, error) {
	var env Envelope
	top, err := objectFields(data)
	if err != nil {
		return env, err
	}
	if err := field(top, "id", &env.ID); err != nil {
		return env, err
	}
	var t string
	if err := field(top, "type", &t); err != nil {
		return env, err
	}
	if !toMonitorTypes[MessageType(t)] {
		return env, &UnknownTypeError{Type: t}
	}
	raw, ok := top["content"]
	if !ok {
		return env, fmt.Errorf("%s: missing field \"content\"", t)
	}
	content, err := objectFields(raw)
	if err != nil {
		return env, fmt.Errorf("%s content: %w", t, err)
	}
	switch MessageType(t) {
	case TypeUpscaleNotification:
		a, err := allocationField(content, "granted")
		env.Message = UpscaleNotification{Granted: a}
		return env, wrapIf(err, t)
	case TypeDownscaleRequest:
		a, err := allocationField(content, "target")
		env.Message = DownscaleRequest{Target: a}
		return env, wrapIf(err, t)
	case TypeHealthCheck:
		env.Message = HealthCheck{}
	case TypeInvalidMessage:
		s, err := stringField(content, "error")
		env.Message = InvalidMessage{Error: s}
		return env, wrapIf(err, t)
	case TypeInternalError:
		s, err := stringField(content, "error")
		env.Message = InternalError{Error: s}
		return env, wrapIf(err, t)
	}
	return env, nil
}

// DecodeFromMonitor reads a message as Neon's agent does: the type and id
// first, then the whole frame into the type's payload with Go's usual JSON
// rules (so "ok" is read as "Ok", and missing fields are zero). Errors carry
// the texts the agent puts in its InvalidMessage replies.
func DecodeFromMonitor(data []byte) (Envelope, error) {
	var env Envelope
	var head struct {
		Type string `json:"type"`
		ID   uint64 `json:"id"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return env, fmt.Errorf("error unmarshaling message header: %w", err)
	}
	env.ID = head.ID
	var m Message
	switch MessageType(head.Type) {
	case TypeUpscaleConfirmation:
		m = &UpscaleConfirmation{}
	case TypeUpscaleRequest:
		m = &UpscaleRequest{}
	case TypeDownscaleResult:
		m = &DownscaleResult{}
	case TypeHealthCheck:
		m = &HealthCheck{}
	case TypeInvalidMessage:
		m = &InvalidMessage{}
	case TypeInternalError:
		m = &InternalError{}
	default:
		return env, &UnknownTypeError{Type: head.Type}
	}
	if err := json.Unmarshal(data, m); err != nil {
		return env, fmt.Errorf("error unmarshaling %s: %w", head.Type, err)
	}
	switch p := m.(type) {
	case *UpscaleConfirmation:
		env.Message = *p
	case *UpscaleRequest:
		env.Message = *p
	case *DownscaleResult:
		env.Message = *p
	case *HealthCheck:
		env.Message = *p
	case *InvalidMessage:
		env.Message = *p
	case *InternalError:
		env.Message = *p
	}
	return env, nil
}

func wrapIf(err error, t string) error {
	if err != nil {
		return fmt.Errorf("%s content: %w", t, err)
	}
	return nil
}

// objectFields splits a JSON object into its fields, names matched exactly.
func objectFields(data []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, err
	}
	if fields == nil {
		return nil, errors.New("expected an object, got null")
	}
	return fields, nil
}

// field decodes a required, non-null field.
func field(fields map[string]json.RawMessage, key string, dst any) error {
	raw, ok := fields[key]
	if !ok {
		return fmt.Errorf("missing field %q", key)
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return fmt.Errorf("field %q is null", key)
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("field %q: %w", key, err)
	}
	return nil
}

func stringField(fields map[string]json.RawMessage, key string) (string, error) {
	var s string
	return s, field(fields, key, &s)
}

func allocationField(fields map[string]json.RawMessage, key string) (Allocation, error) {
	var a Allocation
	raw, ok := fields[key]
	if !ok {
		return a, fmt.Errorf("missing field %q", key)
	}
	inner, err := objectFields(raw)
	if err != nil {
		return a, fmt.Errorf("field %q: %w", key, err)
	}
	if err := field(inner, "cpu", &a.Cpu); err != nil {
		return a, fmt.Errorf("field %q: %w", key, err)
	}
	if err := field(inner, "mem", &a.Mem); err != nil {
		return a, fmt.Errorf("field %q: %w", key, err)
	}
	return a, nil
}
