package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const vectorsDir = "../../testdata/compat/vectors"

func readVector(t *testing.T, rel string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(vectorsDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

type roundtrip struct {
	Input    string  `json:"input"`
	Output   string  `json:"output"`
	MemBytes *uint64 `json:"memBytes"`
	MilliCPU *uint32 `json:"milliCPU"`
}

// Every plain vector decodes and re-encodes to the same bytes.
func TestResourcesVectorsExact(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "resources", "*.json"))
	n := 0
	for _, f := range files {
		base := filepath.Base(f)
		if strings.Contains(base, ".roundtrip.") || strings.Contains(base, "rejected") {
			continue
		}
		n++
		raw := readVector(t, filepath.Join("resources", base))
		var r Resources
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(raw) {
			t.Errorf("%s: re-encoded %s, want %s", base, out, raw)
		}
	}
	if n != 5 {
		t.Fatalf("found %d plain resources vectors, want 5", n)
	}
}

// Alternative inputs (including the odd edge cases) give Neon's output.
func TestResourcesVectorsRoundtrip(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "resources", "*.roundtrip.json"))
	if len(files) < 6 {
		t.Fatalf("found %d roundtrip files", len(files))
	}
	for _, f := range files {
		var cases []roundtrip
		if err := json.Unmarshal(readVector(t, filepath.Join("resources", filepath.Base(f))), &cases); err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			var r Resources
			if err := json.Unmarshal([]byte(c.Input), &r); err != nil {
				t.Errorf("%s: %s rejected: %v", filepath.Base(f), c.Input, err)
				continue
			}
			if c.MemBytes != nil && uint64(r.Mem) != *c.MemBytes {
				t.Errorf("%s: mem %d, want %d", c.Input, r.Mem, *c.MemBytes)
			}
			if c.MilliCPU != nil && uint32(r.VCPU) != *c.MilliCPU {
				t.Errorf("%s: milliCPU %d, want %d", c.Input, r.VCPU, *c.MilliCPU)
			}
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			// Neon's exact bytes (key order included): a bonus we meet.
			if string(out) != c.Output {
				t.Errorf("%s → %s, want %s", c.Input, out, c.Output)
			}
		}
	}
}

func TestResourcesRejected(t *testing.T) {
	var cases []struct {
		Input      string `json:"input"`
		Error      string `json:"error"`
		AcceptedAs string `json:"acceptedAs"`
	}
	if err := json.Unmarshal(readVector(t, "resources/rejected-inputs.json"), &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		var r Resources
		err := json.Unmarshal([]byte(c.Input), &r)
		if c.AcceptedAs != "" {
			if err != nil {
				t.Errorf("%s: rejected (%v), Neon accepts it as %s", c.Input, err, c.AcceptedAs)
				continue
			}
			out, _ := json.Marshal(r)
			if !jsonEqual(t, out, []byte(c.AcceptedAs)) {
				t.Errorf("%s → %s, want %s", c.Input, out, c.AcceptedAs)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s accepted as %v; Neon rejects it (%s)", c.Input, r, c.Error)
		}
	}
}

func TestBytesEncoding(t *testing.T) {
	cases := []struct {
		b    Bytes
		want string
	}{
		{0, `0`}, {1, `1`}, {1023, `1023`}, {1024, `"1Ki"`}, {1025, `"1025"`},
		{1536, `"1536"`}, {256 << 20, `"256Mi"`}, {3 << 30, `"3Gi"`}, {1_000_000_000, `"1000000000"`},
	}
	for _, c := range cases {
		out, err := json.Marshal(c.b)
		if err != nil || string(out) != c.want {
			t.Errorf("Marshal(%d) = %s, %v; want %s", uint64(c.b), out, err, c.want)
		}
		var back Bytes
		if err := json.Unmarshal(out, &back); err != nil || back != c.b {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", out, back, err, c.b)
		}
	}
	for _, bad := range []string{`"-1"`, `-5`, `"1 Gi"`, `true`, `{}`, `"99999999999Ei"`} {
		var b Bytes
		if err := json.Unmarshal([]byte(bad), &b); err == nil {
			t.Errorf("Unmarshal(%s) = %d, want an error", bad, b)
		}
	}
}

func TestResourcesCompare(t *testing.T) {
	a := Resources{VCPU: 1000, Mem: 4 << 30}
	b := Resources{VCPU: 750, Mem: 5 << 30}
	if a.FitsIn(b) || b.FitsIn(a) || !a.AnyAbove(b) || !b.AnyAbove(a) {
		t.Fatal("incomparable pair misjudged")
	}
	if !a.FitsIn(a) || a.AnyAbove(a) {
		t.Fatal("a must fit in itself")
	}
	if !(Resources{}).IsZero() || !(Resources{VCPU: 1}).HasZero() || (Resources{VCPU: 1, Mem: 1}).HasZero() {
		t.Fatal("zero checks")
	}
}

// FuzzResources: whatever decodes re-encodes to text that decodes to the same
// value, and encoding never fails.
func FuzzResources(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "resources", "*.json"))
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		if strings.Contains(file, "roundtrip") || strings.Contains(file, "rejected") {
			var cases []roundtrip
			_ = json.Unmarshal(raw, &cases)
			for _, c := range cases {
				f.Add([]byte(c.Input))
			}
			continue
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"vCPUs":"1e-9","mem":"1e30"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Resources
		if err := json.Unmarshal(data, &r); err != nil {
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%s decoded to %v but does not encode: %v", data, r, err)
		}
		var back Resources
		if err := json.Unmarshal(out, &back); err != nil || back != r {
			t.Fatalf("%s → %v → %s → %v, %v", data, r, out, back, err)
		}
	})
}
