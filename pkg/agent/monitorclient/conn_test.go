package monitorclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
	"github.com/vmscale/vmscale/tests/poll"
)

const vectors = "../../../testdata/compat/vectors/agent-monitor"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func wsURL(srv *httptest.Server) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + monitor.Path
}

// rawPeer is a websocket server that records the agent's frames and lets
// the test script the monitor's side.
type rawPeer struct {
	frames chan string
	conns  chan *websocket.Conn
}

func newRawPeer(t *testing.T) (*rawPeer, *httptest.Server) {
	p := &rawPeer{frames: make(chan string, 32), conns: make(chan *websocket.Conn, 1)}
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		_, hello, err := c.ReadMessage()
		if err != nil {
			return
		}
		p.frames <- string(hello)
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"version":1}`))
		p.conns <- c
		for {
			_, d, err := c.ReadMessage()
			if err != nil {
				close(p.frames)
				return
			}
			p.frames <- string(d)
		}
	}))
	t.Cleanup(srv.Close)
	return p, srv
}

func (p *rawPeer) next(t *testing.T) string {
	t.Helper()
	select {
	case f, ok := <-p.frames:
		if !ok {
			t.Fatal("connection closed")
		}
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no frame from the agent")
	}
	return ""
}

func vectorFrame(t *testing.T, name string) string {
	raw, err := os.ReadFile(filepath.Join(vectors, "agent-to-monitor", name+".frame.json"))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func trigger(t *testing.T, name string) (input, reply string) {
	raw, err := os.ReadFile(filepath.Join(vectors, "monitor-to-agent", name+".trigger.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Input, AgentReply string }
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v.Input, v.AgentReply
}

// TestFramesEqualVectors: the agent's frames are Neon's, byte for byte:
// the handshake, the first request with id 2, the next with id 4, and the
// InvalidMessage replies to bad monitor messages.
func TestFramesEqualVectors(t *testing.T) {
	peer, srv := newRawPeer(t)
	ctx := context.Background()
	var upscales atomic.Int32
	conn, err := Dial(ctx, wsURL(srv), quiet(), func() { upscales.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, want := peer.next(t), vectorFrame(t, "version-request"); got != want {
		t.Fatalf("handshake %q, want %q", got, want)
	}
	ws := <-peer.conns

	errc := make(chan error, 1)
	go func() { errc <- conn.Upscale(ctx, api.Resources{VCPU: 1500, Mem: 6 << 30}) }()
	if got, want := peer.next(t), vectorFrame(t, "UpscaleNotification"); got != want {
		t.Fatalf("upscale frame %q, want %q", got, want)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"UpscaleConfirmation","id":2}`))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	resc := make(chan api.DownscaleResult, 1)
	go func() {
		r, err := conn.Downscale(ctx, api.Resources{VCPU: 500, Mem: 2 << 30})
		errc <- err
		resc <- r
	}()
	if got, want := peer.next(t), vectorFrame(t, "DownscaleRequest"); got != want {
		t.Fatalf("downscale frame %q, want %q", got, want)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"DownscaleResult","Ok":false,"Status":"calculated memory threshold too low","id":4}`))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r := <-resc; r.Ok || r.Status != "calculated memory threshold too low" {
		t.Fatalf("result %+v", r)
	}

	// An unsolicited upscale request reaches the callback, unanswered.
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"UpscaleRequest","id":1}`))
	poll.Until(t, 5*time.Second, 5*time.Millisecond, "upscale request", func() error {
		if upscales.Load() != 1 {
			return fmt.Errorf("%d upscale requests", upscales.Load())
		}
		return nil
	})
	for _, name := range []string{"unknown-id", "unknown-type"} {
		in, reply := trigger(t, name)
		_ = ws.WriteMessage(websocket.TextMessage, []byte(in))
		if got := peer.next(t); got != reply {
			t.Fatalf("%s: reply %q, want %q", name, got, reply)
		}
	}
	// The connection stays open after those: a health check still works.
	go func() { errc <- conn.HealthCheck(ctx) }()
	if got := peer.next(t); got != `{"content":{},"type":"HealthCheck","id":6}`+"\n" {
		t.Fatalf("health check frame %q", got)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"HealthCheck","id":6}`))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// A message of a known type that cannot be read: InvalidMessage, then
	// the agent hangs up.
	in, reply := trigger(t, "bad-field-type")
	_ = ws.WriteMessage(websocket.TextMessage, []byte(in))
	if got := peer.next(t); got != reply {
		t.Fatalf("bad field: reply %q, want %q", got, reply)
	}
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed after an unreadable message")
	}
}

func TestHandshakeRefused(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := up.Upgrade(w, r, nil)
		_, _, _ = c.ReadMessage()
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"error":"Received protocol version range 2 to 3 which does not overlap with 1"}`))
	}))
	defer srv.Close()
	_, err := Dial(context.Background(), wsURL(srv), quiet(), nil)
	if err == nil || !strings.Contains(err.Error(), "does not overlap") {
		t.Fatalf("err %v", err)
	}
}

// handler is the monitor's decisions; the server around it is the real
// pkg/monitor one.
type handler struct {
	mu         sync.Mutex
	upscales   []api.Allocation
	downscales []api.Allocation
	deny       bool
}

func (h *handler) Setup(context.Context) error { return nil }
func (h *handler) Upscale(_ context.Context, a api.Allocation) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.upscales = append(h.upscales, a)
	return nil
}

func (h *handler) Downscale(_ context.Context, a api.Allocation) (api.DownscaleResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.downscales = append(h.downscales, a)
	if h.deny {
		return api.DownscaleResult{Ok: false, Status: "calculated memory threshold too low"}, nil
	}
	return api.DownscaleResult{Ok: true, Status: "ok"}, nil
}

// events records what Run reports.
type events struct {
	mu       sync.Mutex
	conn     *Conn
	connects int
	drops    int
	upscales int
}

func (e *events) Connected(c *Conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conn, e.connects = c, e.connects+1
}

func (e *events) Disconnected(error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conn, e.drops = nil, e.drops+1
}

func (e *events) UpscaleRequested() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.upscales++
}

func (e *events) current() *Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conn
}

// TestAgainstRealMonitor runs the client against pkg/monitor's server
// over a real websocket: upscale, downscale approved and denied, the
// monitor's own upscale request, and reconnection after the monitor drops
// the connection.
func TestAgainstRealMonitor(t *testing.T) {
	h := &handler{}
	upscales := make(chan pressure.Request, 1)
	ms := monitor.NewServer(h, upscales, quiet(), monitor.NewMetrics(nil), clock.RealClock{})
	srv := httptest.NewServer(ms.Routes())
	defer srv.Close()
	defer ms.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := &events{}
	cfg := Config{ConnectTimeout: 4 * time.Second, RetryMinWait: 50 * time.Millisecond, HealthCheckEvery: 20 * time.Millisecond,
		MaxHealthCheckFails: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); Run(ctx, wsURL(srv), cfg, clock.RealClock{}, quiet(), ev) }()

	var conn *Conn
	poll.Until(t, 10*time.Second, 10*time.Millisecond, "connected", func() error {
		if conn = ev.current(); conn == nil {
			return fmt.Errorf("not connected")
		}
		return nil
	})
	if err := conn.Upscale(ctx, api.Resources{VCPU: 1500, Mem: 6 << 30}); err != nil {
		t.Fatal(err)
	}
	r, err := conn.Downscale(ctx, api.Resources{VCPU: 500, Mem: 2 << 30})
	if err != nil || !r.Ok {
		t.Fatalf("downscale %+v %v", r, err)
	}
	h.mu.Lock()
	h.deny = true
	h.mu.Unlock()
	r, err = conn.Downscale(ctx, api.Resources{VCPU: 250, Mem: 1 << 30})
	if err != nil || r.Ok || r.Status == "" {
		t.Fatalf("denied downscale %+v %v", r, err)
	}
	h.mu.Lock()
	if len(h.upscales) != 1 || h.upscales[0] != (api.Allocation{Cpu: 1.5, Mem: 6 << 30}) || len(h.downscales) != 2 {
		t.Fatalf("monitor saw %+v / %+v", h.upscales, h.downscales)
	}
	h.mu.Unlock()

	upscales <- pressure.Request{}
	poll.Until(t, 5*time.Second, 5*time.Millisecond, "upscale request forwarded", func() error {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if ev.upscales < 1 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	// The monitor drops the connection: Run reconnects.
	ms.Close()
	poll.Until(t, 10*time.Second, 10*time.Millisecond, "reconnected", func() error {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if ev.drops < 1 || ev.connects < 2 || ev.conn == nil {
			return fmt.Errorf("connects %d drops %d", ev.connects, ev.drops)
		}
		return nil
	})
	if err := ev.current().HealthCheck(ctx); err != nil {
		t.Fatalf("new connection: %v", err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// TestSilentMonitorIsReplaced: a monitor that stops answering health
// checks is dropped after MaxHealthCheckFails and dialled again.
func TestSilentMonitorIsReplaced(t *testing.T) {
	var conns atomic.Int32
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_, _, _ = c.ReadMessage()
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"version":1}`))
		conns.Add(1)
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := &events{}
	cfg := Config{ConnectTimeout: time.Second, RetryMinWait: 10 * time.Millisecond, HealthCheckEvery: 10 * time.Millisecond,
		MaxHealthCheckFails: 100 * time.Millisecond}
	go Run(ctx, wsURL(srv), cfg, clock.RealClock{}, quiet(), ev)
	poll.Until(t, 10*time.Second, 10*time.Millisecond, "silent monitor replaced", func() error {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if ev.drops < 1 || conns.Load() < 2 {
			return fmt.Errorf("drops %d, connections %d", ev.drops, conns.Load())
		}
		return nil
	})
}
