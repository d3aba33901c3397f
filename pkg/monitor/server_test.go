package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
	"github.com/vmscale/vmscale/tests/poll"
)

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fakeHandler records what the server asked of it.
type fakeHandler struct {
	mu         sync.Mutex
	setups     int
	upscales   []api.Allocation
	downscales []api.Allocation
	setupErr   error
	upErr      error
	downErr    error
	downResult api.DownscaleResult
	panicOn    string
}

func (h *fakeHandler) Setup(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.setups++
	return h.setupErr
}

func (h *fakeHandler) Upscale(_ context.Context, a api.Allocation) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.panicOn == "upscale" {
		panic("boom")
	}
	h.upscales = append(h.upscales, a)
	return h.upErr
}

func (h *fakeHandler) Downscale(_ context.Context, a api.Allocation) (api.DownscaleResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.downscales = append(h.downscales, a)
	return h.downResult, h.downErr
}

// waitSetups polls until Setup has run n times (it runs right after the
// handshake answer is written).
func (h *fakeHandler) waitSetups(t *testing.T, n int) {
	t.Helper()
	poll.Until(t, 5*time.Second, 5*time.Millisecond, "session setups", func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.setups != n {
			return fmt.Errorf("%d setups, want %d", h.setups, n)
		}
		return nil
	})
}

// waitCounter polls until a metric reaches want: metrics are updated after
// the frame is on the wire, so the client may see the frame first.
func waitCounter(t *testing.T, c prometheus.Collector, want float64) {
	t.Helper()
	poll.Until(t, 5*time.Second, 5*time.Millisecond, "metric", func() error {
		if got := testutil.ToFloat64(c); got != want {
			return fmt.Errorf("%v, want %v", got, want)
		}
		return nil
	})
}

type testServer struct {
	*Server
	url      string
	metrics  *Metrics
	upscales chan pressure.Request
}

func startServer(t *testing.T, h Handler) *testServer {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	up := make(chan pressure.Request, 1)
	s := NewServer(h, up, testLog(t), m, clock.RealClock{})
	hs := httptest.NewServer(s.Routes())
	t.Cleanup(func() { s.Close(); hs.Close() })
	return &testServer{Server: s, url: "ws" + strings.TrimPrefix(hs.URL, "http") + Path, metrics: m, upscales: up}
}

// agent is a test client speaking as Neon's agent does.
type agent struct {
	t    *testing.T
	conn *websocket.Conn
}

func dial(t *testing.T, url string) *agent {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { c.Close() })
	return &agent{t: t, conn: c}
}

// connect dials and does the v1.0 handshake.
func connect(t *testing.T, url string) *agent {
	t.Helper()
	a := dial(t, url)
	a.writeRaw(`{"min":1,"max":1}` + "\n")
	if got := a.readRaw(); got != `{"version":1}` {
		t.Fatalf("handshake answer %s", got)
	}
	return a
}

func (a *agent) writeRaw(s string) {
	a.t.Helper()
	if err := a.conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		a.t.Fatalf("write: %v", err)
	}
}

func (a *agent) send(id uint64, m api.Message) {
	a.t.Helper()
	data, err := api.EncodeToMonitor(id, m)
	if err != nil {
		a.t.Fatal(err)
	}
	a.writeRaw(string(data) + "\n")
}

// readRaw reads one text frame with a deadline.
func (a *agent) readRaw() string {
	a.t.Helper()
	s, err := a.tryRead(5 * time.Second)
	if err != nil {
		a.t.Fatalf("read: %v", err)
	}
	return s
}

func (a *agent) tryRead(timeout time.Duration) (string, error) {
	_ = a.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		kind, data, err := a.conn.ReadMessage()
		if err != nil {
			return "", err
		}
		if kind == websocket.TextMessage {
			return string(data), nil
		}
	}
}

func (a *agent) read() api.Envelope {
	a.t.Helper()
	raw := a.readRaw()
	env, err := api.DecodeFromMonitor([]byte(raw))
	if err != nil {
		a.t.Fatalf("the agent could not read %s: %v", raw, err)
	}
	return env
}

// expectClosed waits for the server to close the connection and returns
// the close code.
func (a *agent) expectClosed() int {
	a.t.Helper()
	s, err := a.tryRead(10 * time.Second)
	if err == nil {
		a.t.Fatalf("got %s, want the connection closed", s)
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

func TestHandshake(t *testing.T) {
	h := &fakeHandler{}
	srv := startServer(t, h)
	connect(t, srv.url)
	h.waitSetups(t, 1)

	for _, c := range []struct{ in, want, result string }{
		{`{"min":2,"max":3}`, `{"error":"Received protocol version range 2 to 3 which does not overlap with 1"}`, "version_mismatch"},
		{`{"min":0,"max":0}`, `{"error":"Received protocol version range 0 which does not overlap with 1"}`, "version_mismatch"},
		{`{"min":3,"max":1}`, `{"error":"failed to parse protocol version range: version range: min 3 is above max 1"}`, "invalid"},
		{`hello`, `{"error":"failed to parse protocol version range: version range: invalid character 'h' looking for beginning of value"}`, "invalid"},
	} {
		a := dial(t, srv.url)
		a.writeRaw(c.in)
		if got := a.readRaw(); got != c.want {
			t.Errorf("%s: answered %s, want %s", c.in, got, c.want)
		}
		if code := a.expectClosed(); code != websocket.CloseProtocolError {
			t.Errorf("%s: closed with %d, want %d", c.in, code, websocket.CloseProtocolError)
		}
	}
	waitCounter(t, srv.metrics.Handshakes.WithLabelValues("version_mismatch"), 2)
	// A range that includes v1.0 is answered with it.
	a := dial(t, srv.url)
	a.writeRaw(`{"min":1,"max":7}`)
	if got := a.readRaw(); got != `{"version":1}` {
		t.Errorf("1..7 answered %s", got)
	}
	// Binary frames before the handshake are ignored.
	b := dial(t, srv.url)
	if err := b.conn.WriteMessage(websocket.BinaryMessage, []byte("xx")); err != nil {
		t.Fatal(err)
	}
	b.writeRaw(`{"min":1,"max":1}`)
	if got := b.readRaw(); got != `{"version":1}` {
		t.Errorf("after a binary frame: %s", got)
	}
}

// The handshake (and setup) must be done within 4 s of connecting.
func TestHandshakeDeadline(t *testing.T) {
	t.Parallel()
	srv := startServer(t, &fakeHandler{})
	a := dial(t, srv.url)
	start := time.Now()
	code := a.expectClosed()
	took := time.Since(start)
	if code != websocket.ClosePolicyViolation {
		t.Errorf("closed with %d, want %d", code, websocket.ClosePolicyViolation)
	}
	if took < HandshakeTimeout-200*time.Millisecond || took > HandshakeTimeout+2*time.Second {
		t.Errorf("closed after %s, want about %s", took, HandshakeTimeout)
	}
	waitCounter(t, srv.metrics.Handshakes.WithLabelValues("timeout"), 1)
}

func TestSetupFailureClosesTheConnection(t *testing.T) {
	srv := startServer(t, &fakeHandler{setupErr: errors.New("no meminfo")})
	a := dial(t, srv.url)
	a.writeRaw(`{"min":1,"max":1}`)
	if got := a.readRaw(); got != `{"version":1}` {
		t.Fatalf("handshake answer %s", got)
	}
	if code := a.expectClosed(); code != websocket.CloseInternalServerErr {
		t.Errorf("closed with %d, want %d", code, websocket.CloseInternalServerErr)
	}
}

// Every agent message type, as the agent frames it, gets its reply.
func TestRequests(t *testing.T) {
	h := &fakeHandler{downResult: api.DownscaleResult{Ok: false, Status: "calculated memory threshold too low: 781.00 MiB < 1.02 GiB (current usage)"}}
	srv := startServer(t, h)
	a := connect(t, srv.url)

	a.send(2, api.UpscaleNotification{Granted: api.Allocation{Cpu: 1.5, Mem: 6 << 30}})
	if got := a.readRaw(); got != `{"type":"UpscaleConfirmation","id":2}` {
		t.Errorf("upscale reply %s", got)
	}
	a.send(4, api.DownscaleRequest{Target: api.Allocation{Cpu: 0.5, Mem: 2 << 30}})
	if got := a.readRaw(); got != `{"type":"DownscaleResult","Ok":false,"Status":"calculated memory threshold too low: 781.00 MiB < 1.02 GiB (current usage)","id":4}` {
		t.Errorf("downscale reply %s", got)
	}
	// InvalidMessage and InternalError from the agent are only logged: the
	// next frame is the health check's reply.
	a.send(5, api.InvalidMessage{Error: "Received message of unknown type: \"Foo\""})
	a.send(100, api.InternalError{Error: "example agent internal error"})
	a.send(6, api.HealthCheck{})
	if got := a.readRaw(); got != `{"type":"HealthCheck","id":6}` {
		t.Errorf("health check reply %s", got)
	}
	h.mu.Lock()
	if len(h.upscales) != 1 || h.upscales[0] != (api.Allocation{Cpu: 1.5, Mem: 6 << 30}) ||
		len(h.downscales) != 1 || h.downscales[0] != (api.Allocation{Cpu: 0.5, Mem: 2 << 30}) {
		t.Errorf("handler saw upscales %v, downscales %v", h.upscales, h.downscales)
	}
	h.mu.Unlock()

	// The agent's own frames from the vectors, byte for byte.
	frames, _ := filepath.Glob("../../testdata/compat/vectors/agent-monitor/agent-to-monitor/*.frame.json")
	if len(frames) == 0 {
		t.Fatal("no vector frames")
	}
	for _, f := range frames {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(f, "version-request") {
			continue
		}
		a.writeRaw(string(data))
		env, _ := api.DecodeFromAgent(data)
		switch env.Message.(type) {
		case api.InvalidMessage, api.InternalError:
			continue // no reply
		}
		got := a.read()
		if got.ID != env.ID {
			t.Errorf("%s: reply %+v has id %d", filepath.Base(f), got, got.ID)
		}
	}
	waitCounter(t, srv.metrics.MessagesReceived.WithLabelValues("HealthCheck"), 2)
}

func TestInvalidMessages(t *testing.T) {
	srv := startServer(t, &fakeHandler{})
	a := connect(t, srv.url)
	for _, c := range []struct {
		in     string
		id     uint64
		prefix string
	}{
		{`not json`, 0, "failed to deserialize message: invalid character"},
		{`{"content":{},"type":"Foo","id":8}`, 8, `failed to deserialize message: Received message of unknown type: "Foo"`},
		{`{"content":{},"type":"UpscaleRequest","id":10}`, 10, `failed to deserialize message: Received message of unknown type: "UpscaleRequest"`},
		{`{"content":{"granted":{"cpu":"lots","mem":1}},"type":"UpscaleNotification","id":12}`, 12, "failed to deserialize message: UpscaleNotification content"},
		{`{"type":"HealthCheck","id":14}`, 14, `failed to deserialize message: HealthCheck: missing field "content"`},
		{`[]`, 0, "failed to deserialize message:"},
	} {
		a.writeRaw(c.in)
		env := a.read()
		msg, ok := env.Message.(api.InvalidMessage)
		if !ok || env.ID != c.id || !strings.HasPrefix(msg.Error, c.prefix) {
			t.Errorf("%s: got %+v, want InvalidMessage id %d starting %q", c.in, env, c.id, c.prefix)
		}
	}
	// Binary frames are ignored; the connection is still good.
	if err := a.conn.WriteMessage(websocket.BinaryMessage, []byte(`{"content":{},"type":"HealthCheck","id":2}`)); err != nil {
		t.Fatal(err)
	}
	a.send(16, api.HealthCheck{})
	if env := a.read(); env.ID != 16 || env.Message != (api.HealthCheck{}) {
		t.Errorf("after invalid messages: %+v", env)
	}
}

func TestInternalErrors(t *testing.T) {
	h := &fakeHandler{upErr: errors.New("postgres is down"), downErr: pressure.ErrStale}
	srv := startServer(t, h)
	a := connect(t, srv.url)
	a.send(2, api.UpscaleNotification{Granted: api.Allocation{Cpu: 1, Mem: 1 << 30}})
	if got := a.readRaw(); got != `{"type":"InternalError","error":"failed to upscale: postgres is down","id":2}` {
		t.Errorf("upscale failure: %s", got)
	}
	a.send(4, api.DownscaleRequest{Target: api.Allocation{Cpu: 1, Mem: 1 << 30}})
	if got := a.readRaw(); got != `{"type":"InternalError","error":"failed to downscale: cgroup memory stats are stale","id":4}` {
		t.Errorf("downscale failure: %s", got)
	}
	// A panic in a handler is an InternalError, not a crash.
	h.mu.Lock()
	h.panicOn = "upscale"
	h.mu.Unlock()
	a.send(6, api.UpscaleNotification{Granted: api.Allocation{Cpu: 1, Mem: 1 << 30}})
	env := a.read()
	if ie, ok := env.Message.(api.InternalError); !ok || env.ID != 6 || !strings.Contains(ie.Error, "boom") {
		t.Errorf("panic: got %+v", env)
	}
	a.send(8, api.HealthCheck{})
	if env := a.read(); env.ID != 8 {
		t.Errorf("after a panic: %+v", env)
	}
	waitCounter(t, srv.metrics.Downscales.WithLabelValues("failed"), 1)
}

// One agent at a time: a new connection closes the old one.
func TestNewAgentReplacesOld(t *testing.T) {
	h := &fakeHandler{}
	srv := startServer(t, h)
	first := connect(t, srv.url)
	second := connect(t, srv.url)
	if code := first.expectClosed(); code != websocket.ClosePolicyViolation {
		t.Errorf("first agent closed with %d, want %d", code, websocket.ClosePolicyViolation)
	}
	second.send(2, api.HealthCheck{})
	if env := second.read(); env.ID != 2 {
		t.Errorf("second agent got %+v", env)
	}
	// Even a connection that has not shaken hands yet replaces the session.
	third := dial(t, srv.url)
	if code := second.expectClosed(); code != websocket.ClosePolicyViolation {
		t.Errorf("second agent closed with %d", code)
	}
	third.writeRaw(`{"min":1,"max":1}`)
	if got := third.readRaw(); got != `{"version":1}` {
		t.Errorf("third handshake: %s", got)
	}
	h.waitSetups(t, 3)
	waitCounter(t, srv.metrics.AgentConnections, 3)
}

// The watcher's decisions go out as UpscaleRequests with odd ids from 3.
func TestUpscaleRequests(t *testing.T) {
	srv := startServer(t, &fakeHandler{})
	srv.upscales <- pressure.Request{CrossedAt: time.Now()} // nobody connected: dropped
	a := connect(t, srv.url)
	a.send(2, api.HealthCheck{})
	if got := a.readRaw(); got != `{"type":"HealthCheck","id":2}` {
		t.Fatalf("first frame %s: a stale upscale request was sent", got)
	}
	srv.upscales <- pressure.Request{CrossedAt: time.Now().Add(-300 * time.Millisecond)}
	if got := a.readRaw(); got != `{"type":"UpscaleRequest","id":3}` {
		t.Errorf("first request %s", got)
	}
	srv.upscales <- pressure.Request{}
	env := a.read()
	if env.ID != 5 || env.Message.(api.UpscaleRequest).Wanted() != (api.MoreResources{Memory: true}) {
		t.Errorf("second request %+v", env)
	}
	waitCounter(t, srv.metrics.MessagesSent.WithLabelValues("UpscaleRequest"), 2)
	waitCounter(t, srv.metrics.MessagesSent.WithLabelValues("HealthCheck"), 1)
	// Only the first request of an episode carries a crossing time.
	var h dto.Metric
	if err := srv.metrics.UpscaleRequestLatency.Write(&h); err != nil {
		t.Fatal(err)
	}
	if n, sum := h.GetHistogram().GetSampleCount(), h.GetHistogram().GetSampleSum(); n != 1 || sum < 0.3 {
		t.Errorf("latency histogram: %d samples, sum %v s; want 1 of at least 0.3 s", n, sum)
	}
}
