package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Every agent-plugin vector decodes and re-encodes to Neon's exact bytes.
func TestAgentPluginVectorsExact(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "agent-plugin", "*.json"))
	n := 0
	for _, f := range files {
		base := filepath.Base(f)
		raw, _ := os.ReadFile(f)
		var v any
		switch {
		case strings.HasPrefix(base, "AgentRequest-") && !strings.Contains(base, "roundtrip"):
			v = &AgentRequest{}
		case strings.HasPrefix(base, "PluginResponse-"):
			v = &PluginResponse{}
		default:
			continue
		}
		n++
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(raw) {
			t.Errorf("%s: re-encoded\n %s\nwant\n %s", base, out, raw)
		}
		if req, ok := v.(*AgentRequest); ok {
			if err := req.Validate(); err != nil {
				t.Errorf("%s: valid request rejected: %v", base, err)
			}
		}
	}
	if n != 7 {
		t.Fatalf("checked %d vectors, want 7", n)
	}
}

func TestAgentRequestAlternateInputs(t *testing.T) {
	var cases []roundtrip
	if err := json.Unmarshal(readVector(t, "agent-plugin/AgentRequest-alternate-inputs.roundtrip.json"), &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range cases {
		var r AgentRequest
		if err := json.Unmarshal([]byte(c.Input), &r); err != nil {
			t.Fatalf("%s: %v", c.Input, err)
		}
		out, _ := json.Marshal(r)
		if string(out) != c.Output {
			t.Errorf("%s\n→ %s\nwant %s", c.Input, out, c.Output)
		}
	}
}

func TestPluginProtoVersionStrings(t *testing.T) {
	var want map[string]string
	if err := json.Unmarshal(readVector(t, "agent-plugin/PluginProtoVersion-strings.json"), &want); err != nil {
		t.Fatal(err)
	}
	if len(want) != 9 {
		t.Fatalf("%d names", len(want))
	}
	for k, name := range want {
		n, _ := strconv.Atoi(k)
		if got := PluginProtoVersion(n).String(); got != name {
			t.Errorf("version %d: %q, want %q", n, got, name)
		}
	}
}

func TestAgentRequestValidate(t *testing.T) {
	ok := func() AgentRequest {
		return AgentRequest{
			ProtoVersion: 7, Pod: PodRef{Namespace: "ns", Name: "p"},
			ComputeUnit: &Resources{VCPU: 250, Mem: 1 << 30}, Resources: Resources{VCPU: 1000, Mem: 4 << 30},
		}
	}
	cases := []struct {
		name string
		mod  func(*AgentRequest)
		err  string
	}{
		{"valid", func(*AgentRequest) {}, ""},
		{"version 0", func(r *AgentRequest) { r.ProtoVersion = 0 }, "protocol version mismatch: need v5.0 but got <invalid: zero>"},
		{"version 6", func(r *AgentRequest) { r.ProtoVersion = 6 }, "protocol version mismatch: need v5.0 but got v4.0"},
		{"version 8", func(r *AgentRequest) { r.ProtoVersion = 8 }, "protocol version mismatch: need v5.0 but got <unknown = v5.0 + 1>"},
		{"no compute unit", func(r *AgentRequest) { r.ComputeUnit = nil }, "computeUnit"},
		{"zero cpu unit", func(r *AgentRequest) { r.ComputeUnit.VCPU = 0 }, "computeUnit"},
		{"zero mem unit", func(r *AgentRequest) { r.ComputeUnit.Mem = 0 }, "computeUnit"},
		{"no pod", func(r *AgentRequest) { r.Pod.Name = "" }, "pod"},
	}
	for _, c := range cases {
		r := ok()
		c.mod(&r)
		err := r.Validate()
		if c.err == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.err)
		}
	}
}

func FuzzAgentRequest(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "agent-plugin", "AgentRequest-*.json"))
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		if strings.Contains(file, "roundtrip") {
			var cases []roundtrip
			_ = json.Unmarshal(raw, &cases)
			for _, c := range cases {
				f.Add([]byte(c.Input))
			}
			continue
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r AgentRequest
		if err := json.Unmarshal(data, &r); err != nil {
			return
		}
		_ = r.Validate()
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%s decoded but does not encode: %v", data, err)
		}
		var back AgentRequest
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		again, _ := json.Marshal(back)
		if string(again) != string(out) {
			t.Fatalf("not stable: %s then %s", out, again)
		}
	})
}

func FuzzPluginResponse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "agent-plugin", "PluginResponse-*.json"))
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r PluginResponse
		if err := json.Unmarshal(data, &r); err != nil {
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%s decoded but does not encode: %v", data, err)
		}
		var back PluginResponse
		if err := json.Unmarshal(out, &back); err != nil || back.Permit != r.Permit || (back.Migrate == nil) != (r.Migrate == nil) {
			t.Fatalf("%s → %s → %+v, %v", data, out, back, err)
		}
	})
}
