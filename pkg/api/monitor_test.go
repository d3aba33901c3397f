package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const monitorVectors = "../../testdata/compat/vectors/agent-monitor"

// jsonEqual reports whether two documents hold the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("not JSON: %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("not JSON: %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func glob(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors match %s (err %v)", pattern, err)
	}
	return files
}

// Every frame Neon's agent wrote decodes as the monitor reads it and
// re-encodes to the same bytes, newline included.
func TestAgentToMonitorVectors(t *testing.T) {
	frames := glob(t, filepath.Join(monitorVectors, "agent-to-monitor", "*.frame.json"))
	if len(frames) != 9 {
		t.Errorf("%d agent frames, want 9: update this test when vectors are added", len(frames))
	}
	for _, path := range frames {
		name := strings.TrimSuffix(filepath.Base(path), ".frame.json")
		t.Run(name, func(t *testing.T) {
			frame := readFile(t, path)
			var wrapper struct {
				Frame     string `json:"frame"`
				Serialize string `json:"serializeMonitorMessage"`
			}
			if err := json.Unmarshal(readFile(t, strings.TrimSuffix(path, ".frame.json")+".json"), &wrapper); err != nil {
				t.Fatal(err)
			}
			if wrapper.Frame != string(frame) {
				t.Fatalf("wrapper frame %q differs from the frame file %q", wrapper.Frame, frame)
			}
			if !bytes.HasSuffix(frame, []byte("\n")) {
				t.Fatalf("agent frame %q does not end in a newline", frame)
			}
			var encoded []byte
			if name == "version-request" {
				r, err := DecodeVersionRange(frame)
				if err != nil {
					t.Fatal(err)
				}
				if r != (VersionRange[MonitorProtoVersion]{Min: 1, Max: 1}) {
					t.Fatalf("decoded %+v, want 1..1", r)
				}
				encoded, err = json.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
			} else {
				env, err := DecodeFromAgent(frame)
				if err != nil {
					t.Fatalf("the monitor rejects the agent's frame: %v", err)
				}
				if !strings.HasPrefix(name, string(env.Message.MessageType())) {
					t.Fatalf("decoded a %s from %s", env.Message.MessageType(), name)
				}
				// The agent's own messages have even ids; its InvalidMessage
				// replies reuse the (odd) id of the monitor's message.
				if env.ID%2 != 0 && env.Message.MessageType() != TypeInvalidMessage {
					t.Errorf("agent id %d is odd", env.ID)
				}
				encoded, err = EncodeToMonitor(env.ID, env.Message)
				if err != nil {
					t.Fatal(err)
				}
				if string(encoded) != wrapper.Serialize {
					t.Errorf("encoded %s, Neon's SerializeMonitorMessage gave %s", encoded, wrapper.Serialize)
				}
			}
			if got := string(encoded) + "\n"; got != string(frame) {
				t.Errorf("re-encoded frame\n got %q\nwant %q", got, frame)
			}
		})
	}
}

// A monitor-to-agent vector: what Neon's agent accepted (or rejected) and
// how it read it.
type monitorVector struct {
	Accepted   bool            `json:"accepted"`
	Input      string          `json:"input"`
	Handler    string          `json:"handler"`
	Parsed     json.RawMessage `json:"parsed"`
	ParsedJSON string          `json:"parsedJSON"`
	AgentReply string          `json:"agentReply"`
	Version    uint32          `json:"version"`
	VersionStr string          `json:"versionString"`
	Error      string          `json:"error"`
	Requested  string          `json:"upscaleRequestedJSON"`
}

func TestMonitorToAgentVectors(t *testing.T) {
	files := glob(t, filepath.Join(monitorVectors, "monitor-to-agent", "*.json"))
	if len(files) != 13 {
		t.Errorf("%d monitor vectors, want 13: update this test when vectors are added", len(files))
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".json")
		t.Run(name, func(t *testing.T) {
			var v monitorVector
			if err := json.Unmarshal(readFile(t, path), &v); err != nil {
				t.Fatal(err)
			}
			input := []byte(v.Input)
			switch {
			case strings.HasPrefix(name, "version-reply"):
				checkVersionReply(t, v)
			case strings.HasSuffix(name, ".trigger"):
				checkTrigger(t, name, v)
			default:
				if !v.Accepted {
					t.Fatalf("vector %s is neither accepted nor a trigger", name)
				}
				env, err := DecodeFromMonitor(input)
				if err != nil {
					t.Fatalf("rejected what Neon's agent accepted: %v", err)
				}
				if env.ID%2 == 0 && env.Message.MessageType() == TypeUpscaleRequest {
					t.Errorf("unsolicited monitor id %d is even", env.ID)
				}
				if want := strings.TrimPrefix(v.Handler, "handle"); !strings.Contains(v.Handler, "(inline)") &&
					want != string(env.Message.MessageType()) && !(want == "MonitorError" && env.Message.MessageType() == TypeInternalError) {
					t.Errorf("decoded a %s; Neon ran %s", env.Message.MessageType(), v.Handler)
				}
				if v.Parsed != nil {
					var want DownscaleResult
					if err := json.Unmarshal(v.Parsed, &want); err != nil {
						t.Fatal(err)
					}
					if env.Message != want {
						t.Errorf("parsed %+v, Neon parsed %+v", env.Message, want)
					}
				}
				if v.ParsedJSON != "" {
					got, _ := json.Marshal(env.Message)
					if string(got) != v.ParsedJSON {
						t.Errorf("payload JSON %s, Neon's %s", got, v.ParsedJSON)
					}
				}
				if v.Requested != "" {
					got, _ := json.Marshal(env.Message.(UpscaleRequest).Wanted())
					if string(got) != v.Requested {
						t.Errorf("upscale request read as %s, Neon reads %s", got, v.Requested)
					}
				}
				out, err := EncodeToAgent(env.ID, env.Message)
				if err != nil {
					t.Fatal(err)
				}
				if name == "DownscaleResult-lowercase-keys" {
					// Only Go's case-insensitive matching accepts these keys; the
					// monitor writes them capitalised, so compare the values.
					back, err := DecodeFromMonitor(out)
					if err != nil || back != env {
						t.Errorf("re-encoded %s decodes to %+v (%v), want %+v", out, back, err, env)
					}
					if !bytes.Contains(out, []byte(`"Ok":true,"Status":`)) {
						t.Errorf("re-encoded %s without the capitalised keys", out)
					}
					return
				}
				if string(out) != v.Input {
					t.Errorf("re-encoded\n got %s\nwant %s", out, v.Input)
				}
				if !jsonEqual(t, out, input) {
					t.Errorf("re-encoded %s is not the same JSON as %s", out, input)
				}
			}
		})
	}
}

func checkVersionReply(t *testing.T, v monitorVector) {
	r, err := DecodeMonitorProtocolResponse([]byte(v.Input))
	if err != nil {
		t.Fatalf("rejected Neon's handshake reply: %v", err)
	}
	if v.Version != 0 {
		if r.Error != nil || uint32(r.Version) != v.Version || r.Version.String() != v.VersionStr {
			t.Errorf("read %+v (%s), want version %d (%s)", r, r.Version, v.Version, v.VersionStr)
		}
	} else if r.Error == nil || !strings.Contains(v.Error, *r.Error) {
		t.Errorf("read %+v, want the error in %q", r, v.Error)
	}
	out, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != v.Input {
		t.Errorf("re-encoded %s, want %s", out, v.Input)
	}
}

// checkTrigger covers inputs Neon's agent refused, and the InvalidMessage
// it answered with.
func checkTrigger(t *testing.T, name string, v monitorVector) {
	if v.Accepted {
		t.Fatalf("trigger %s is marked accepted", name)
	}
	env, err := DecodeFromMonitor([]byte(v.Input))
	var reason string
	switch name {
	case "unknown-id.trigger":
		// The frame itself is well formed: the agent refuses it because no
		// call of its own is waiting for id 99.
		if err != nil {
			t.Fatalf("well-formed frame rejected: %v", err)
		}
		reason = fmt.Sprintf("Received %s with id %d but id is unknown or already timed out waiting for a reply", env.Message.MessageType(), env.ID)
	case "unknown-type.trigger":
		var ute *UnknownTypeError
		if !errors.As(err, &ute) {
			t.Fatalf("want an UnknownTypeError, got %v", err)
		}
		reason = err.Error()
	default:
		if err == nil {
			t.Fatalf("accepted %s, which Neon's agent rejects", v.Input)
		}
		reason = err.Error()
	}
	reply, err := EncodeToMonitor(env.ID, InvalidMessage{Error: reason})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(reply) + "\n"; got != v.AgentReply {
		t.Errorf("agent reply\n got %q\nwant %q", got, v.AgentReply)
	}
}

// What the monitor must refuse from an agent.
func TestDecodeFromAgentRejects(t *testing.T) {
	for _, in := range []string{
		``, `null`, `[]`, `"x"`, `{}`,
		`{"type":"HealthCheck","content":{}}`,                // no id
		`{"type":"HealthCheck","id":2}`,                      // no content
		`{"content":{},"id":2}`,                              // no type
		`{"type":"HealthCheck","content":{},"id":-2}`,        // negative id
		`{"type":"HealthCheck","content":{},"id":null}`,      // null id
		`{"type":"HealthCheck","content":null,"id":2}`,       // null content
		`{"type":"Foo","content":{},"id":2}`,                 // unknown type
		`{"type":"UpscaleConfirmation","content":{},"id":2}`, // monitor-to-agent only
		`{"type":"UpscaleRequest","content":{},"id":2}`,      // monitor-to-agent only
		`{"Type":"HealthCheck","Content":{},"Id":2}`,         // names are case-sensitive
		`{"type":"UpscaleNotification","content":{},"id":2}`, // no granted
		`{"type":"UpscaleNotification","content":{"granted":{"cpu":1}},"id":2}`,
		`{"type":"UpscaleNotification","content":{"granted":{"mem":1}},"id":2}`,
		`{"type":"UpscaleNotification","content":{"granted":{"cpu":"1","mem":1}},"id":2}`,
		`{"type":"DownscaleRequest","content":{"target":{"cpu":1,"mem":-1}},"id":2}`,
		`{"type":"DownscaleRequest","content":{"target":{"cpu":1,"mem":1.5}},"id":2}`,
		`{"type":"DownscaleRequest","content":{"target":{"cpu":1,"mem":null}},"id":2}`,
		`{"type":"DownscaleRequest","content":{"target":null},"id":2}`,
		`{"type":"InvalidMessage","content":{"error":5},"id":2}`,
		`{"type":"InternalError","content":{},"id":2}`,
	} {
		if env, err := DecodeFromAgent([]byte(in)); err == nil {
			t.Errorf("accepted %s as %+v", in, env)
		}
	}
	// A rejected message still yields its id when it could be read, so the
	// monitor's InvalidMessage can carry it.
	env, err := DecodeFromAgent([]byte(`{"type":"Foo","content":{},"id":8}`))
	var ute *UnknownTypeError
	if !errors.As(err, &ute) || ute.Type != "Foo" || env.ID != 8 {
		t.Errorf("unknown type: got %+v, %v", env, err)
	}
}

func TestDecodeFromAgentAccepts(t *testing.T) {
	env, err := DecodeFromAgent([]byte(`{"id":4,"extra":1,"type":"DownscaleRequest","content":{"target":{"mem":2147483648,"cpu":0.5,"x":"y"}}}`))
	want := Envelope{ID: 4, Message: DownscaleRequest{Target: Allocation{Cpu: 0.5, Mem: 2 << 30}}}
	if err != nil || env != want {
		t.Errorf("got %+v, %v; want %+v", env, err, want)
	}
}

func TestEncodeDirection(t *testing.T) {
	if _, err := EncodeToMonitor(2, UpscaleRequest{}); err == nil {
		t.Error("encoded an UpscaleRequest for the monitor")
	}
	if _, err := EncodeToAgent(3, UpscaleNotification{}); err == nil {
		t.Error("encoded an UpscaleNotification for the agent")
	}
	got, err := EncodeToAgent(7, UpscaleRequest{})
	if err != nil || string(got) != `{"type":"UpscaleRequest","id":7}` {
		t.Errorf("got %s, %v", got, err)
	}
}

func TestVersionHandshake(t *testing.T) {
	type vr = VersionRange[MonitorProtoVersion]
	for _, c := range []struct {
		a, b vr
		want MonitorProtoVersion
		ok   bool
	}{
		{vr{1, 1}, vr{1, 1}, 1, true},
		{vr{1, 3}, vr{2, 5}, 3, true},
		{vr{2, 5}, vr{1, 3}, 3, true},
		{vr{1, 1}, vr{2, 3}, 0, false},
		{vr{4, 6}, vr{1, 3}, 0, false},
	} {
		got, ok := c.a.LatestSharedVersion(c.b)
		if got != c.want || ok != c.ok {
			t.Errorf("%v ∩ %v = %d, %v; want %d, %v", c.a, c.b, got, ok, c.want, c.ok)
		}
	}
	if s := (vr{2, 3}).String(); s != "2 to 3" {
		t.Errorf("String = %q", s)
	}
	for _, in := range []string{`{"min":2,"max":1}`, `{"min":1}`, `{"max":1}`, `{"min":null,"max":1}`, `{"min":-1,"max":1}`, `[1,1]`, `null`} {
		if r, err := DecodeVersionRange([]byte(in)); err == nil {
			t.Errorf("accepted %s as %+v", in, r)
		}
	}
	for _, in := range []string{`{}`, `null`, `{"version":"1"}`} {
		if r, err := DecodeMonitorProtocolResponse([]byte(in)); err == nil {
			t.Errorf("accepted %s as %+v", in, r)
		}
	}
	if v := MonitorProtoVersion(2).String(); !strings.Contains(v, "unknown") {
		t.Errorf("version 2 is %q", v)
	}
}
