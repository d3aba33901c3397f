package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// socketMonitor implements go-qemu's qmp.Monitor over a QMP socket.
//
// go-qemu's own SocketMonitor hands the reply to a command to its caller in
// the line scanner's buffer, which the next line read overwrites: when QEMU
// sends an event right after a reply (device_add is followed by
// ACPI_DEVICE_OST), the caller decodes garbage ("unexpected end of JSON
// input"). It also has no way to give up on a reply and leaks its reader when
// closed. This monitor copies every line, takes a context, and never blocks
// its reader on a reply nobody waits for.
type socketMonitor struct {
	conn net.Conn

	mu      sync.Mutex // one command at a time
	replies chan []byte
	events  chan goqmp.Event
	done    chan struct{} // closed when the reader stops
	readErr error

	closeOnce sync.Once
}

var _ goqmp.Monitor = (*socketMonitor)(nil)

func dialMonitor(ctx context.Context, network, addr string) (*socketMonitor, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err // qmp.Dial says what it dialled
	}
	m := &socketMonitor{conn: conn, replies: make(chan []byte, 1), events: make(chan goqmp.Event, 64), done: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := m.Connect(); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return m, nil
}

// Connect reads QEMU's greeting and leaves capabilities negotiation mode.
func (m *socketMonitor) Connect() error {
	r := bufio.NewReader(m.conn)
	var greeting struct {
		QMP *struct{} `json:"QMP"`
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read QMP greeting: %w", err)
	}
	if err := json.Unmarshal(line, &greeting); err != nil || greeting.QMP == nil {
		return fmt.Errorf("not a QMP greeting: %q", line)
	}
	if _, err := m.conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		return fmt.Errorf("send qmp_capabilities: %w", err)
	}
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("read qmp_capabilities reply: %w", err)
		}
		if isEvent(line) {
			continue
		}
		if err := replyError(line); err != nil {
			return fmt.Errorf("qmp_capabilities: %w", err)
		}
		break
	}
	go m.read(r)
	return nil
}

func (m *socketMonitor) read(r *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := r.ReadBytes('\n') // a fresh slice every time
		if err != nil {
			m.readErr = err
			return
		}
		if isEvent(line) {
			var ev goqmp.Event
			if json.Unmarshal(line, &ev) == nil {
				select {
				case m.events <- ev:
				default: // nobody listens; drop rather than block
				}
			}
			continue
		}
		select {
		case m.replies <- line:
		case <-m.done:
			return
		}
	}
}

func isEvent(line []byte) bool {
	var probe struct {
		Event string `json:"event"`
	}
	return json.Unmarshal(line, &probe) == nil && probe.Event != ""
}

// replyError is QEMU's error in a reply, if it holds one.
func replyError(line []byte) error {
	var r struct {
		Error *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("malformed QMP reply %q: %w", line, err)
	}
	if r.Error != nil {
		return &errQEMU{r.Error.Desc}
	}
	return nil
}

// Disconnect closes the connection; the reader stops.
func (m *socketMonitor) Disconnect() error {
	var err error
	m.closeOnce.Do(func() { err = m.conn.Close() })
	return err
}

// Run sends one command and returns QEMU's reply, without a deadline.
func (m *socketMonitor) Run(command []byte) ([]byte, error) {
	return m.run(context.Background(), command)
}

// closedErr is why a command got no reply: the connection's read error
// (io.EOF when QEMU closed it), kept for errors.Is.
func (m *socketMonitor) closedErr() error {
	if m.readErr == nil {
		return errors.New("connection closed")
	}
	return fmt.Errorf("connection closed: %w", m.readErr)
}

// errQEMU marks an error QEMU returned for a command (as opposed to a broken
// connection).
type errQEMU struct{ desc string }

func (e *errQEMU) Error() string { return e.desc }

func (m *socketMonitor) run(ctx context.Context, command []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return nil, m.closedErr()
	default:
	}
	// A context that has already ended sends nothing (otherwise the select
	// below could take a fast reply over ctx.Done: either is ready).
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := m.conn.Write(append(command, '\n')); err != nil {
		return nil, err
	}
	select {
	case line := <-m.replies:
		if err := replyError(line); err != nil {
			return nil, err
		}
		return line, nil
	case <-m.done:
		return nil, m.closedErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Events streams QMP events; events arriving while nobody reads are dropped.
func (m *socketMonitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return m.events, nil
}
