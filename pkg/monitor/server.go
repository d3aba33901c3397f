// Package monitor is vmscale's vm-monitor: the in-guest end of the
// autoscaler-agent's websocket (ws://<vm>:10301/monitor). It speaks Neon's
// agent↔monitor protocol v1.0 to one agent at a time, asks for more memory
// when Postgres's cgroup is under pressure (package cgroup), approves or
// denies downscales, and keeps Postgres's cache sized to the VM's memory
// (package filecache). Server carries the protocol; Core makes the
// decisions.
package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
)

// Path is where the agent connects.
const Path = "/monitor"

// HandshakeTimeout is how long a new connection has to finish the version
// handshake and the session's setup (the agent gives up after 4 s too).
const HandshakeTimeout = 4 * time.Second

// requestTimeout bounds the work for one agent request.
const requestTimeout = 10 * time.Second

// writeTimeout bounds one frame's write.
const writeTimeout = 5 * time.Second

// ProtocolRange is the protocol versions this monitor speaks.
var ProtocolRange = api.VersionRange[api.MonitorProtoVersion]{Min: api.MonitorProtoV1_0, Max: api.MonitorProtoV1_0}

// Handler does what the agent asks; *Core is the real one.
type Handler interface {
	Setup(ctx context.Context) error
	Upscale(ctx context.Context, granted api.Allocation) error
	Downscale(ctx context.Context, target api.Allocation) (api.DownscaleResult, error)
}

// Server serves the agent's websocket. Only one agent session lives at a
// time: a new connection ends the previous session before it starts.
type Server struct {
	handler   Handler
	upscales  <-chan pressure.Request
	log       *slog.Logger
	metrics   *Metrics
	clock     clock.PassiveClock
	upgrader  websocket.Upgrader
	handshake time.Duration

	mu      sync.Mutex // serialises session handover
	current *session
}

// NewServer makes a server for h; upscales (nil without a cgroup) carries
// the watcher's decisions to ask for more memory.
func NewServer(h Handler, upscales <-chan pressure.Request, log *slog.Logger, m *Metrics, clk clock.PassiveClock) *Server {
	return &Server{
		handler: h, upscales: upscales, log: log, metrics: m, clock: clk, handshake: HandshakeTimeout,
		upgrader: websocket.Upgrader{
			HandshakeTimeout: HandshakeTimeout,
			// The agent is not a browser; it sends no Origin worth checking.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
}

// Routes is the server's HTTP handler: GET /monitor.
func (s *Server) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, s.serveAgent)
	return mux
}

// Close ends the current session, if any.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != nil {
		s.current.stop(websocket.CloseGoingAway, "vm-monitor is shutting down")
		s.current = nil
	}
}

func (s *Server) serveAgent(w http.ResponseWriter, r *http.Request) {
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.log.Warn("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return // the upgrader has answered already
	}
	s.metrics.AgentConnections.Inc()
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	sess := &session{
		srv: s, conn: conn, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		log: s.log.With("agent", r.RemoteAddr), nextID: 1,
	}
	s.mu.Lock()
	if old := s.current; old != nil {
		s.log.Info("a new agent connected; closing the previous connection", "previous", old.conn.RemoteAddr().String(), "new", r.RemoteAddr)
		old.stop(websocket.ClosePolicyViolation, "a newer agent connection replaced this one")
	}
	s.current = sess
	s.mu.Unlock()

	sess.run()

	s.mu.Lock()
	if s.current == sess {
		s.current = nil
	}
	s.mu.Unlock()
}

// session is one agent's connection.
type session struct {
	srv    *Server
	conn   *websocket.Conn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	writeMu sync.Mutex
	nextID  uint64 // the last odd id the monitor used
	closeMu sync.Once
}

// stop ends the session with a close frame and waits until it is over.
func (sess *session) stop(code int, reason string) {
	sess.closeWith(code, reason)
	<-sess.done
}

func (sess *session) closeWith(code int, reason string) {
	sess.closeMu.Do(func() {
		_ = sess.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		sess.cancel()
		_ = sess.conn.Close()
	})
}

func (sess *session) run() {
	defer close(sess.done)
	defer sess.closeWith(websocket.CloseNormalClosure, "")
	m := sess.srv.metrics
	sess.conn.SetReadLimit(1 << 20)

	deadline := time.Now().Add(sess.srv.handshake)
	version, ok := sess.handshake(deadline)
	if !ok {
		return
	}
	setupCtx, cancel := context.WithDeadline(sess.ctx, deadline)
	err := sess.srv.handler.Setup(setupCtx)
	cancel()
	if err != nil {
		sess.log.Error("session setup failed; closing the connection", "err", err)
		sess.closeWith(websocket.CloseInternalServerErr, "setup failed")
		return
	}
	if time.Now().After(deadline) {
		sess.log.Warn("session setup took longer than the agent waits", "limit", sess.srv.handshake)
	}
	_ = sess.conn.SetReadDeadline(time.Time{})
	sess.log.Info("agent connected", "version", version.String())
	m.AgentConnected.Set(1)
	defer m.AgentConnected.Set(0)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer sess.cancel()
	if sess.srv.upscales != nil {
		// A decision made while no agent listened is stale by now.
		select {
		case <-sess.srv.upscales:
		default:
		}
		wg.Go(sess.forwardUpscales)
	}
	for {
		kind, data, err := sess.conn.ReadMessage()
		if err != nil {
			if sess.ctx.Err() == nil {
				sess.log.Info("agent connection ended", "err", err)
			}
			return
		}
		if kind != websocket.TextMessage {
			continue // the protocol is text frames only
		}
		sess.dispatch(data)
	}
}

// handshake reads the agent's version range and answers it.
func (sess *session) handshake(deadline time.Time) (api.MonitorProtoVersion, bool) {
	m := sess.srv.metrics
	_ = sess.conn.SetReadDeadline(deadline)
	var data []byte
	for {
		kind, d, err := sess.conn.ReadMessage()
		if err != nil {
			timeout := false
			if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
				timeout = true
			}
			if sess.ctx.Err() != nil {
				return 0, false // replaced or shut down
			}
			sess.log.Warn("no protocol handshake from the agent; closing", "err", err)
			if timeout {
				m.Handshakes.WithLabelValues("timeout").Inc()
				sess.closeWith(websocket.ClosePolicyViolation, "no protocol handshake within "+sess.srv.handshake.String())
			} else {
				m.Handshakes.WithLabelValues("invalid").Inc()
			}
			return 0, false
		}
		if kind == websocket.TextMessage {
			data = d
			break
		}
	}
	theirs, err := api.DecodeVersionRange(data)
	if err != nil {
		sess.refuse("invalid", fmt.Sprintf("failed to parse protocol version range: %v", err))
		return 0, false
	}
	v, ok := ProtocolRange.LatestSharedVersion(theirs)
	if !ok {
		sess.refuse("version_mismatch", fmt.Sprintf("Received protocol version range %s which does not overlap with %s", theirs, ProtocolRange))
		return 0, false
	}
	if err := sess.writeJSON(api.MonitorProtocolResponse{Version: v}); err != nil {
		sess.log.Warn("cannot answer the handshake", "err", err)
		return 0, false
	}
	m.Handshakes.WithLabelValues("ok").Inc()
	return v, true
}

func (sess *session) refuse(result, msg string) {
	sess.srv.metrics.Handshakes.WithLabelValues(result).Inc()
	sess.log.Warn("refusing the agent's handshake", "reason", msg)
	_ = sess.writeJSON(api.MonitorProtocolResponse{Error: &msg})
	sess.closeWith(websocket.CloseProtocolError, "protocol handshake failed")
}

// dispatch handles one message; requests are answered in order.
func (sess *session) dispatch(data []byte) {
	m := sess.srv.metrics
	env, err := api.DecodeFromAgent(data)
	if err != nil {
		m.MessagesReceived.WithLabelValues("unparsable").Inc()
		sess.log.Warn("cannot understand a message from the agent", "err", err, "id", env.ID)
		sess.send(env.ID, api.InvalidMessage{Error: "failed to deserialize message: " + err.Error()})
		return
	}
	t := env.Message.MessageType()
	m.MessagesReceived.WithLabelValues(string(t)).Inc()
	defer func() {
		if p := recover(); p != nil {
			sess.log.Error("handling a request panicked", "type", t, "id", env.ID, "panic", p)
			sess.send(env.ID, api.InternalError{Error: fmt.Sprintf("failed to handle %s: internal error: %v", t, p)})
		}
	}()
	ctx, cancel := context.WithTimeout(sess.ctx, requestTimeout)
	defer cancel()
	h := sess.srv.handler
	switch msg := env.Message.(type) {
	case api.UpscaleNotification:
		if err := h.Upscale(ctx, msg.Granted); err != nil {
			m.Upscales.WithLabelValues("failed").Inc()
			sess.log.Error("upscale failed", "granted", msg.Granted, "err", err)
			sess.send(env.ID, api.InternalError{Error: "failed to upscale: " + err.Error()})
			return
		}
		m.Upscales.WithLabelValues("ok").Inc()
		sess.send(env.ID, api.UpscaleConfirmation{})
	case api.DownscaleRequest:
		res, err := h.Downscale(ctx, msg.Target)
		if err != nil {
			m.Downscales.WithLabelValues("failed").Inc()
			sess.log.Error("downscale failed", "target", msg.Target, "err", err)
			sess.send(env.ID, api.InternalError{Error: "failed to downscale: " + err.Error()})
			return
		}
		result := "approved"
		if !res.Ok {
			result = "denied"
		}
		m.Downscales.WithLabelValues(result).Inc()
		sess.log.Info("downscale "+result, "target", msg.Target, "status", res.Status)
		sess.send(env.ID, res)
	case api.HealthCheck:
		sess.send(env.ID, api.HealthCheck{})
	case api.InvalidMessage:
		sess.log.Warn("the agent could not understand a message of ours", "id", env.ID, "error", msg.Error)
	case api.InternalError:
		sess.log.Warn("the agent reports an internal error", "id", env.ID, "error", msg.Error)
	}
}

// forwardUpscales sends the watcher's upscale requests while the session
// lives.
func (sess *session) forwardUpscales() {
	for {
		select {
		case <-sess.ctx.Done():
			return
		case r := <-sess.srv.upscales:
			if sess.sendNew(api.UpscaleRequest{}) && !r.CrossedAt.IsZero() {
				sess.srv.metrics.UpscaleRequestLatency.Observe(sess.srv.clock.Since(r.CrossedAt).Seconds())
			}
		}
	}
}

// send writes a reply (or a message about the agent's message id). A
// failed write ends the session.
func (sess *session) send(id uint64, msg api.Message) bool {
	sess.writeMu.Lock()
	defer sess.writeMu.Unlock()
	return sess.sendLocked(id, msg)
}

// sendNew writes a message of the monitor's own with the next odd id.
func (sess *session) sendNew(msg api.Message) bool {
	sess.writeMu.Lock()
	defer sess.writeMu.Unlock()
	sess.nextID += 2
	return sess.sendLocked(sess.nextID, msg)
}

func (sess *session) sendLocked(id uint64, msg api.Message) bool {
	data, err := api.EncodeToAgent(id, msg)
	if err != nil {
		sess.log.Error("cannot encode a message", "type", msg.MessageType(), "err", err)
		return false
	}
	if err := sess.write(data); err != nil {
		sess.log.Warn("cannot write to the agent; closing", "type", msg.MessageType(), "err", err)
		sess.cancel()
		_ = sess.conn.Close()
		return false
	}
	sess.srv.metrics.MessagesSent.WithLabelValues(string(msg.MessageType())).Inc()
	return true
}

func (sess *session) writeJSON(v api.MonitorProtocolResponse) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode the handshake answer: %w", err)
	}
	sess.writeMu.Lock()
	defer sess.writeMu.Unlock()
	return sess.write(data)
}

func (sess *session) write(data []byte) error {
	_ = sess.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return sess.conn.WriteMessage(websocket.TextMessage, data)
}
