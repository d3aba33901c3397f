// Package qmp is typed QMP for the runner and the controller, on
// github.com/digitalocean/go-qemu's QMP types and Monitor interface: vCPU
// hotplug, virtio-mem, memory size, status, power-down and the live-migration
// commands. Every call takes a context; a call that outlives it closes the
// connection (a late reply would otherwise be read as the answer to the next
// command), so a Client that returned a context error must be dialled again.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// ErrClosed is returned by calls on a Client that was closed, or broken by a
// call that outlived its context.
var ErrClosed = errors.New("qmp connection closed")

// Client is one QMP connection. Its methods may be called from several
// goroutines; QMP runs one command at a time.
type Client struct {
	addr string
	mon  *socketMonitor

	mu     sync.Mutex
	closed bool
}

// Dial connects to a QMP server ("tcp", "127.0.0.1:20183" or "unix",
// "/vm/qmp.sock") and completes the capabilities handshake.
func Dial(ctx context.Context, network, addr string) (*Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	mon, err := dialMonitor(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("connect to qmp %s: %w", addr, err)
	}
	return &Client{addr: addr, mon: mon}, nil
}

// Monitor is the connection as go-qemu's qmp.Monitor, for go-qemu's own
// helpers.
func (c *Client) Monitor() goqmp.Monitor { return c.mon }

// Events delivers the connection's QMP events as they arrive (buffered;
// dropped while nobody reads), until Done is closed.
func (c *Client) Events() <-chan goqmp.Event { return c.mon.events }

// Done is closed when the connection ends: QEMU closed it (it exited) or
// Close was called. Events read before then stay in Events.
func (c *Client) Done() <-chan struct{} { return c.mon.done }

// Close ends the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return c.mon.Disconnect()
}

// Error is QEMU's answer to a command that failed.
type Error struct {
	Command string
	Desc    string
}

func (e *Error) Error() string { return fmt.Sprintf("qmp %s: %s", e.Command, e.Desc) }

// Execute runs command with args (nil for none) and decodes the "return"
// value into out (nil to ignore it).
func (c *Client) Execute(ctx context.Context, command string, args any, out any) error {
	raw, err := json.Marshal(goqmp.Command{Execute: command, Args: args})
	if err != nil {
		return fmt.Errorf("encode qmp %s: %w", command, err)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("qmp %s on %s: %w", command, c.addr, ErrClosed)
	}
	c.mu.Unlock()
	reply, err := c.mon.run(ctx, raw)
	if err != nil {
		var qerr *errQEMU
		if errors.As(err, &qerr) {
			return &Error{Command: command, Desc: qerr.desc}
		}
		if ctx.Err() != nil {
			// The reply may still come; nothing may read it as the answer
			// to a later command.
			_ = c.Close()
		}
		return fmt.Errorf("qmp %s on %s: %w", command, c.addr, err)
	}
	if out == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("decode qmp %s reply: %w", command, err)
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("decode qmp %s result %s: %w", command, r.Return, err)
	}
	return nil
}
