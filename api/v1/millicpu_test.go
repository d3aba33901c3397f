package v1

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const vectorsDir = "../../testdata/compat/vectors"

func TestMilliCPUUnmarshal(t *testing.T) {
	cases := []struct {
		in   string
		want MilliCPU
		err  string
	}{
		{in: `1`, want: 1000},
		{in: `2`, want: 2000},
		{in: `0.25`, want: 250},
		{in: `1.5`, want: 1500},
		{in: `"250m"`, want: 250},
		{in: `"1500m"`, want: 1500},
		{in: `"0.25"`, want: 250},
		{in: `"2"`, want: 2000},
		{in: `0`, want: 0},
		{in: `"0.0001"`, want: 1}, // finer than a milli rounds up
		{in: `"1.0005"`, want: 1001},
		{in: `1e3`, want: 1_000_000},
		{in: `"4294967m"`, want: 4294967},
		{in: `"-1"`, err: "negative"},
		{in: `-0.5`, err: "negative"},
		{in: `"5000000"`, err: "too large"},
		{in: `"abc"`, err: "parse cpu amount"},
		{in: `""`, err: "parse cpu amount"},
		{in: `true`, err: "number or a string"},
		{in: `{}`, err: "number or a string"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			var m MilliCPU
			err := json.Unmarshal([]byte(c.in), &m)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Unmarshal(%s) = %d, %v; want error containing %q", c.in, m, err, c.err)
				}
				return
			}
			if err != nil || m != c.want {
				t.Fatalf("Unmarshal(%s) = %d, %v; want %d", c.in, m, err, c.want)
			}
		})
	}
}

func TestMilliCPUNullLeavesValue(t *testing.T) {
	m := MilliCPU(1234)
	if err := json.Unmarshal([]byte(`null`), &m); err != nil || m != 1234 {
		t.Fatalf("Unmarshal(null) = %d, %v; want 1234 unchanged", m, err)
	}
}

func TestMilliCPUMarshal(t *testing.T) {
	cases := map[MilliCPU]string{
		0:    `0`,
		250:  `"250m"`,
		1000: `1`,
		1500: `"1500m"`,
		2000: `2`,
		1:    `"1m"`,
	}
	for m, want := range cases {
		got, err := json.Marshal(m)
		if err != nil || string(got) != want {
			t.Errorf("Marshal(%d) = %s, %v; want %s", m, got, err, want)
		}
		var back MilliCPU
		if err := json.Unmarshal(got, &back); err != nil || back != m {
			t.Errorf("round trip of %d gave %d, %v", m, back, err)
		}
	}
}

func TestMilliCPURoundedUp(t *testing.T) {
	cases := map[MilliCPU]uint32{0: 0, 1: 1, 250: 1, 1000: 1, 1001: 2, 2000: 2, 3999: 4, MaxMilliCPU: 4294968}
	for m, want := range cases {
		if got := m.RoundedUp(); got != want {
			t.Errorf("%d.RoundedUp() = %d; want %d", m, got, want)
		}
	}
}

// Every vm-spec vector is NeonVM's own encoding: decoding it and encoding
// again must give the same JSON value.
func TestVMSpecVectorsRoundTrip(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(vectorsDir, "vm-spec", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vm-spec vectors found: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasPrefix(name, "guest-cpus-"):
				assertRoundTrip[CPUs](t, raw)
			case name == "guest-full-struct.json":
				assertRoundTrip[Guest](t, raw)
			case strings.HasSuffix(name, ".request.json"):
				var req struct {
					Body           string          `json:"body"`
					TargetRevision json.RawMessage `json:"targetRevision"`
				}
				if err := json.Unmarshal(raw, &req); err != nil {
					t.Fatal(err)
				}
				assertRoundTrip[RevisionWithTime](t, req.TargetRevision)
				assertPatchRoundTrip(t, []byte(req.Body))
			case strings.HasPrefix(name, "patch-"):
				assertPatchRoundTrip(t, raw)
			default:
				t.Fatalf("vector %s has no test: add one", name)
			}
		})
	}
}

// assertPatchRoundTrip decodes each value of the agent's scaling patch into
// the API type it replaces and checks it encodes back unchanged.
func assertPatchRoundTrip(t *testing.T, raw []byte) {
	t.Helper()
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 3 {
		t.Fatalf("patch has %d operations; want 3", len(ops))
	}
	for _, op := range ops {
		switch op.Path {
		case "/spec/guest/cpus/use":
			// The agent always writes this one as a string ("2"); MilliCPU
			// must read it, and reads its own encoding back the same.
			var m MilliCPU
			if err := json.Unmarshal(op.Value, &m); err != nil {
				t.Fatalf("%s: %v", op.Path, err)
			}
			var s string
			if err := json.Unmarshal(op.Value, &s); err != nil {
				t.Fatalf("%s is not a string: %s", op.Path, op.Value)
			}
			if want, _ := ParseMilliCPU(s); want != m {
				t.Fatalf("%s: got %d, want %d", op.Path, m, want)
			}
		case "/spec/guest/memorySlots/use":
			var n int32
			if err := json.Unmarshal(op.Value, &n); err != nil {
				t.Fatalf("%s: %v", op.Path, err)
			}
		case "/spec/targetRevision":
			assertRoundTrip[RevisionWithTime](t, op.Value)
		default:
			t.Fatalf("unexpected patch path %s", op.Path)
		}
	}
}

func assertRoundTrip[T any](t *testing.T, raw []byte) {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, raw)
	}
	out, err := json.Marshal(&v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	var want, got any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("%T round trip changed the value\n in: %s\nout: %s", v, raw, out)
	}
}
