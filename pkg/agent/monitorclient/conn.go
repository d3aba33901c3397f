// Package monitorclient is the agent's end of the vm-monitor websocket
// (docs/protocols.md#monitor-protocol): ws://<vm>:10301/monitor, the {"min":1,"max":1}
// handshake, requests with even ids answered by id, the monitor's
// unsolicited upscale requests, health checks every 5 s, and reconnection.
package monitorclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/vmscale/vmscale/pkg/api"
)

// ProtocolRange is the versions the agent speaks.
var ProtocolRange = api.VersionRange[api.MonitorProtoVersion]{Min: api.MonitorProtoV1_0, Max: api.MonitorProtoV1_0}

// ErrClosed is returned for requests on a connection that has ended.
var ErrClosed = errors.New("monitor connection closed")

// Conn is one websocket connection to a vm-monitor, past the handshake.
type Conn struct {
	ws  *websocket.Conn
	log *slog.Logger
	// onUpscale is called (from the reader) when the monitor asks for more.
	onUpscale func()

	writeMu sync.Mutex
	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan api.Envelope // a nil channel: the probe
	probeID uint64
	probeOK bool
	done    chan struct{}
	err     error
	closeMu sync.Once
}

// Dial connects to url, within ctx, and does the version handshake.
func Dial(ctx context.Context, url string, log *slog.Logger, onUpscale func()) (*Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 4 * time.Second}
	ws, _, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("connect to monitor %s: %w", url, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = ws.SetReadDeadline(dl)
		_ = ws.SetWriteDeadline(dl)
	}
	fail := func(err error) (*Conn, error) {
		_ = ws.Close()
		return nil, fmt.Errorf("monitor %s handshake: %w", url, err)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"min":1,"max":1}`+"\n")); err != nil {
		return fail(err)
	}
	var data []byte
	for {
		kind, d, err := ws.ReadMessage()
		if err != nil {
			return fail(err)
		}
		if kind == websocket.TextMessage {
			data = d
			break
		}
	}
	resp, err := api.DecodeMonitorProtocolResponse(data)
	if err != nil {
		return fail(err)
	}
	if resp.Error != nil {
		return fail(fmt.Errorf("monitor refused: %s", *resp.Error))
	}
	if resp.Version != api.MonitorProtoV1_0 {
		return fail(fmt.Errorf("monitor chose version %s, outside %s", resp.Version, ProtocolRange))
	}
	_ = ws.SetReadDeadline(time.Time{})
	_ = ws.SetWriteDeadline(time.Time{})
	ws.SetReadLimit(1 << 20)
	c := &Conn{ws: ws, log: log, onUpscale: onUpscale, waiting: map[uint64]chan api.Envelope{}, done: make(chan struct{})}
	go c.read()
	return c, nil
}

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection.
func (c *Conn) Close() { c.shut(ErrClosed) }

func (c *Conn) shut(err error) {
	c.closeMu.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		c.writeMu.Lock()
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.writeMu.Unlock()
		_ = c.ws.Close()
		close(c.done)
	})
}

func (c *Conn) read() {
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			c.shut(fmt.Errorf("read from monitor: %w", err))
			return
		}
		if kind != websocket.TextMessage {
			continue
		}
		c.handle(data)
	}
}

func (c *Conn) handle(data []byte) {
	env, err := api.DecodeFromMonitor(data)
	if err != nil {
		c.log.Warn("invalid message from the monitor", "err", err)
		_ = c.send(env.ID, api.InvalidMessage{Error: err.Error()})
		var unknown *api.UnknownTypeError
		if !errors.As(err, &unknown) {
			// A known message we cannot read: the peer is broken.
			c.shut(fmt.Errorf("unreadable message from the monitor: %w", err))
		}
		return
	}
	switch m := env.Message.(type) {
	case api.UpscaleRequest:
		if c.onUpscale != nil {
			c.onUpscale()
		}
		return
	case api.InvalidMessage:
		c.log.Warn("the monitor could not read one of our messages", "id", env.ID, "error", m.Error)
	case api.InternalError:
		c.log.Warn("the monitor failed a request", "id", env.ID, "error", m.Error)
	}
	c.mu.Lock()
	ch, ok := c.waiting[env.ID]
	delete(c.waiting, env.ID)
	if ok && ch == nil {
		_, c.probeOK = env.Message.(api.HealthCheck)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if !ok {
		if _, isInvalid := env.Message.(api.InvalidMessage); isInvalid {
			return // never answer an InvalidMessage with another
		}
		_ = c.send(env.ID, api.InvalidMessage{Error: fmt.Sprintf(
			"Received %s with id %d but id is unknown or already timed out waiting for a reply", env.Message.MessageType(), env.ID)})
		return
	}
	ch <- env
}

// send writes one frame; errors end the connection.
func (c *Conn) send(id uint64, m api.Message) error {
	frame, err := api.EncodeToMonitor(id, m)
	if err != nil {
		return err
	}
	frame = append(frame, '\n')
	c.writeMu.Lock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	err = c.ws.WriteMessage(websocket.TextMessage, frame)
	c.writeMu.Unlock()
	if err != nil {
		c.shut(fmt.Errorf("write to monitor: %w", err))
		return fmt.Errorf("send %s: %w", m.MessageType(), err)
	}
	return nil
}

// call sends m with a fresh even id and waits for the reply.
func (c *Conn) call(ctx context.Context, m api.Message) (api.Message, error) {
	ch := make(chan api.Envelope, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.nextID += 2
	id := c.nextID
	c.waiting[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}
	if err := c.send(id, m); err != nil {
		forget()
		return nil, err
	}
	select {
	case env := <-ch:
		switch r := env.Message.(type) {
		case api.InternalError:
			return nil, fmt.Errorf("monitor: %s", r.Error)
		case api.InvalidMessage:
			return nil, fmt.Errorf("monitor could not read our %s: %s", m.MessageType(), r.Error)
		}
		return env.Message, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("waiting for the monitor's reply to %s: %w", m.MessageType(), ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("waiting for the monitor's reply to %s: %w", m.MessageType(), c.Err())
	}
}

// Allocation converts resources for the monitor: vCPUs as a float.
func Allocation(r api.Resources) api.Allocation {
	return api.Allocation{Cpu: r.VCPU.AsFloat64(), Mem: uint64(r.Mem)}
}

// Upscale tells the monitor the VM now has granted.
func (c *Conn) Upscale(ctx context.Context, granted api.Resources) error {
	reply, err := c.call(ctx, api.UpscaleNotification{Granted: Allocation(granted)})
	if err != nil {
		return err
	}
	if _, ok := reply.(api.UpscaleConfirmation); !ok {
		return fmt.Errorf("monitor answered UpscaleNotification with %s", reply.MessageType())
	}
	return nil
}

// Downscale asks the monitor whether the VM may shrink to target.
func (c *Conn) Downscale(ctx context.Context, target api.Resources) (api.DownscaleResult, error) {
	reply, err := c.call(ctx, api.DownscaleRequest{Target: Allocation(target)})
	if err != nil {
		return api.DownscaleResult{}, err
	}
	r, ok := reply.(api.DownscaleResult)
	if !ok {
		return api.DownscaleResult{}, fmt.Errorf("monitor answered DownscaleRequest with %s", reply.MessageType())
	}
	return r, nil
}

// SendProbe sends a health check without waiting for its answer;
// ProbeAnswered tells, later, whether it came. A probe still unanswered
// when the next is sent is forgotten (a late answer gets InvalidMessage,
// as any reply to an id no one waits for). Waiting for no reply saves the
// supervisor a wake-up per check.
func (c *Conn) SendProbe() error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.probeID != 0 {
		delete(c.waiting, c.probeID)
	}
	c.nextID += 2
	id := c.nextID
	c.waiting[id], c.probeID, c.probeOK = nil, id, false
	c.mu.Unlock()
	return c.send(id, api.HealthCheck{})
}

// ProbeAnswered reports whether the last probe got its HealthCheck back.
func (c *Conn) ProbeAnswered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.probeOK
}

// HealthCheck checks that the monitor answers.
func (c *Conn) HealthCheck(ctx context.Context) error {
	reply, err := c.call(ctx, api.HealthCheck{})
	if err != nil {
		return err
	}
	if _, ok := reply.(api.HealthCheck); !ok {
		return fmt.Errorf("monitor answered HealthCheck with %s", reply.MessageType())
	}
	return nil
}
