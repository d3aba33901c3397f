package permit

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

const vectorsDir = "../../../testdata/compat/vectors/agent-plugin"

// fakeBackend permits what is asked, capped at limit, and records calls.
type fakeBackend struct {
	mu    sync.Mutex
	limit api.Resources
	err   error
	seen  []api.AgentRequest
}

func (f *fakeBackend) Permit(_ context.Context, req *api.AgentRequest) (api.Resources, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, *req)
	if f.err != nil {
		return api.Resources{}, f.err
	}
	out := req.Resources
	out.VCPU = min(out.VCPU, f.limit.VCPU)
	out.Mem = min(out.Mem, f.limit.Mem)
	return out, nil
}

type result struct {
	status      int
	contentType string
	body        string
}

func newServer(t *testing.T, b Backend) (*httptest.Server, *[]Outcome) {
	t.Helper()
	var mu sync.Mutex
	var outcomes []Outcome
	h := &Handler{Backend: b, Log: slog.New(slog.DiscardHandler), Observe: func(o Outcome, _ time.Duration) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, &outcomes
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) result {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header.Get("Content-Type"), string(b)}
}

// Every request vector is accepted and answered with a PluginResponse
// holding a permit, in Neon's shape (and no "migrate").
func TestVectorsAccepted(t *testing.T) {
	b := &fakeBackend{limit: api.Resources{VCPU: 100_000, Mem: 1 << 50}}
	srv, _ := newServer(t, b)
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "AgentRequest-*.json"))
	var bodies []string
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		if strings.Contains(f, "roundtrip") {
			var cases []struct{ Input string }
			if err := json.Unmarshal(raw, &cases); err != nil {
				t.Fatal(err)
			}
			for _, c := range cases {
				bodies = append(bodies, c.Input)
			}
			continue
		}
		bodies = append(bodies, string(raw))
	}
	if len(bodies) < 6 {
		t.Fatalf("only %d request vectors", len(bodies))
	}
	for _, body := range bodies {
		var req api.AgentRequest
		_ = json.Unmarshal([]byte(body), &req)
		res := do(t, srv, http.MethodPost, "/", body)
		if res.status != http.StatusOK || res.contentType != "application/json" {
			t.Fatalf("%s: %d %s %s", body, res.status, res.contentType, res.body)
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal([]byte(res.body), &keys); err != nil || len(keys) != 1 || keys["permit"] == nil {
			t.Fatalf("response %s is not {\"permit\":…}", res.body)
		}
		var resp api.PluginResponse
		_ = json.Unmarshal([]byte(res.body), &resp)
		if resp.Permit != req.Resources {
			t.Fatalf("permit %v, asked %v", resp.Permit, req.Resources)
		}
		out, _ := json.Marshal(resp)
		if string(out) != res.body {
			t.Fatalf("response %s is not canonical (%s)", res.body, out)
		}
	}
	// Any path works.
	if res := do(t, srv, http.MethodPost, "/some/where", bodies[0]); res.status != http.StatusOK {
		t.Fatalf("other path: %d", res.status)
	}
}

func TestStatusCodes(t *testing.T) {
	good := `{"protoVersion":7,"pod":{"namespace":"ns","name":"p"},"computeUnit":{"vCPUs":"250m","mem":"1Gi"},"resources":{"vCPUs":1,"mem":"4Gi"},"lastPermit":null,"metrics":null}`
	cases := []struct {
		name, method, body string
		backendErr         error
		status             int
		msg                string
		outcome            Outcome
	}{
		{"GET", http.MethodGet, "", nil, 400, "must be POST", OutcomeBadRequest},
		{"PUT", http.MethodPut, good, nil, 400, "must be POST", OutcomeBadRequest},
		{"bad JSON", http.MethodPost, `{"protoVersion":`, nil, 400, "bad JSON", OutcomeBadRequest},
		{"wrong type", http.MethodPost, `{"protoVersion":"7"}`, nil, 400, "bad JSON", OutcomeBadRequest},
		{"version 0", http.MethodPost, strings.Replace(good, `"protoVersion":7`, `"protoVersion":0`, 1), nil, 400,
			"protocol version mismatch: need v5.0 but got <invalid: zero>", OutcomeBadRequest},
		{"version 6", http.MethodPost, strings.Replace(good, `"protoVersion":7`, `"protoVersion":6`, 1), nil, 400,
			"protocol version mismatch: need v5.0 but got v4.0", OutcomeBadRequest},
		{"version 9", http.MethodPost, strings.Replace(good, `"protoVersion":7`, `"protoVersion":9`, 1), nil, 400,
			"protocol version mismatch: need v5.0 but got <unknown = v5.0 + 2>", OutcomeBadRequest},
		{"zero unit", http.MethodPost, strings.Replace(good, `"vCPUs":"250m"`, `"vCPUs":0`, 1), nil, 400, "computeUnit", OutcomeBadRequest},
		{"too large", http.MethodPost, good[:len(good)-1] + `,"x":"` + strings.Repeat("a", 1024) + `"}`, nil, 400,
			"request body too large", OutcomeBadRequest},
		{"unknown pod", http.MethodPost, good, Errorf(404, "pod ns/p not found"), 404, "pod ns/p not found", OutcomeNotFound},
		{"not a VM", http.MethodPost, good, Errorf(400, "pod ns/p is not owned by a VirtualMachine"), 400, "not owned", OutcomeBadRequest},
		{"timeout", http.MethodPost, good, errors.New("timed out waiting for updates to be processed"), 500, "timed out waiting", OutcomeError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &fakeBackend{limit: api.Resources{VCPU: 100_000, Mem: 1 << 50}, err: c.backendErr}
			srv, outcomes := newServer(t, b)
			res := do(t, srv, c.method, "/", c.body)
			if res.status != c.status || !strings.Contains(res.body, c.msg) {
				t.Fatalf("got %d %q, want %d %q", res.status, res.body, c.status, c.msg)
			}
			if !strings.HasPrefix(res.contentType, "text/plain") {
				t.Fatalf("error content type %q", res.contentType)
			}
			if len(*outcomes) != 1 || (*outcomes)[0] != c.outcome {
				t.Fatalf("outcomes %v, want [%s]", *outcomes, c.outcome)
			}
			if c.backendErr == nil && len(b.seen) != 0 {
				t.Fatal("invalid request reached the backend")
			}
		})
	}
}

// A body of exactly 1 KiB is read; one byte more is refused.
func TestBodyLimitBoundary(t *testing.T) {
	b := &fakeBackend{limit: api.Resources{VCPU: 100_000, Mem: 1 << 50}}
	srv, _ := newServer(t, b)
	base := `{"protoVersion":7,"pod":{"namespace":"ns","name":"p"},"computeUnit":{"vCPUs":"250m","mem":"1Gi"},"resources":{"vCPUs":1,"mem":"4Gi"}}`
	pad := func(n int) string { return base + strings.Repeat(" ", n-len(base)) }
	if res := do(t, srv, http.MethodPost, "/", pad(1024)); res.status != 200 {
		t.Fatalf("1024 bytes: %d %s", res.status, res.body)
	}
	if res := do(t, srv, http.MethodPost, "/", pad(1025)); res.status != 400 || !strings.Contains(res.body, "too large") {
		t.Fatalf("1025 bytes: %d %s", res.status, res.body)
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, "127.0.0.1:0", &Handler{Backend: &fakeBackend{}, Log: slog.New(slog.DiscardHandler)}, ready)
	}()
	addr := <-ready
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
}

func FuzzHandler(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir, "AgentRequest-*.json"))
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		f.Add(raw)
	}
	h := &Handler{Backend: &fakeBackend{limit: api.Resources{VCPU: 1000, Mem: 1 << 30}}, Log: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(body))))
		switch rec.Code {
		case 200:
			var resp api.PluginResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatalf("200 with bad body %q", rec.Body.String())
			}
		case 400:
			if rec.Body.Len() == 0 {
				t.Fatal("400 without a message")
			}
		default:
			t.Fatalf("status %d for %q", rec.Code, body)
		}
	})
}
