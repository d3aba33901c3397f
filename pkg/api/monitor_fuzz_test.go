package api

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"
)

// seedFrames adds every agent frame and monitor input among the vectors.
func seedFrames(f *testing.F) {
	for _, p := range glob(f, filepath.Join(monitorVectors, "agent-to-monitor", "*.frame.json")) {
		f.Add(readFile(f, p))
	}
	for _, p := range glob(f, filepath.Join(monitorVectors, "monitor-to-agent", "*.json")) {
		var v struct {
			Input string `json:"input"`
		}
		if err := json.Unmarshal(readFile(f, p), &v); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(v.Input))
	}
	f.Add([]byte(`{"type":"UpscaleNotification","content":{"granted":{"cpu":1e300,"mem":18446744073709551615}},"id":18446744073709551615}`))
	f.Add([]byte(`{"content":{"error":"\u003c\ud800"},"type":"InvalidMessage","id":0}`))
}

// Whatever the monitor accepts re-encodes to a frame it reads back the same.
func FuzzDecodeFromAgent(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := DecodeFromAgent(data)
		if err != nil {
			return
		}
		out, err := EncodeToMonitor(env.ID, env.Message)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", env, err)
		}
		back, err := DecodeFromAgent(out)
		if err != nil || !reflect.DeepEqual(back, env) {
			t.Fatalf("%q → %+v → %s → %+v, %v", data, env, out, back, err)
		}
	})
}

// Whatever the agent accepts re-encodes to a frame it reads back the same.
func FuzzDecodeFromMonitor(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := DecodeFromMonitor(data)
		if err != nil {
			return
		}
		out, err := EncodeToAgent(env.ID, env.Message)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", env, err)
		}
		back, err := DecodeFromMonitor(out)
		if err != nil || !reflect.DeepEqual(back, env) {
			t.Fatalf("%q → %+v → %s → %+v, %v", data, env, out, back, err)
		}
	})
}

func FuzzDecodeVersionRange(f *testing.F) {
	for _, s := range []string{`{"min":1,"max":1}`, `{"min":2,"max":1}`, `{"max":3,"min":0}`, `{"min":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeVersionRange(data)
		if err != nil {
			return
		}
		if r.Min > r.Max {
			t.Fatalf("accepted an empty range %+v", r)
		}
		if v, ok := r.LatestSharedVersion(r); !ok || v != r.Max {
			t.Fatalf("%+v shares %d, %v with itself", r, v, ok)
		}
		out, _ := json.Marshal(r)
		if back, err := DecodeVersionRange(out); err != nil || back != r {
			t.Fatalf("%+v → %s → %+v, %v", r, out, back, err)
		}
	})
}

func FuzzDecodeMonitorProtocolResponse(f *testing.F) {
	for _, s := range []string{`{"version":1}`, `{"error":"no overlap"}`, `{}`, `{"version":1,"error":""}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeMonitorProtocolResponse(data)
		if err != nil {
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := DecodeMonitorProtocolResponse(out); err != nil || !reflect.DeepEqual(back, r) {
			t.Fatalf("%+v → %s → %+v, %v", r, out, back, err)
		}
	})
}
