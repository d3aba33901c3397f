// Package qmp is typed QMP for the runner and the controller, over
// github.com/digitalocean/go-qemu: vCPU hotplug, virtio-mem, memory size,
// status, power-down and the live-migration commands. Every call takes a
// context; a call that outlives it closes the connection (a late reply
// would otherwise be read as the answer to the next command), so a Client
// that returned a context error must be dialled again.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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

	mu     sync.Mutex
	mon    *goqmp.SocketMonitor
	closed bool
}

// Dial connects to a QMP server ("tcp", "127.0.0.1:20183" or "unix",
// "/vm/qmp.sock") and completes the capabilities handshake.
func Dial(ctx context.Context, network, addr string) (*Client, error) {
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("dial qmp %s: %w", addr, context.DeadlineExceeded)
	}
	mon, err := goqmp.NewSocketMonitor(network, addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", addr, err)
	}
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			_ = mon.Disconnect()
			return nil, fmt.Errorf("qmp handshake with %s: %w", addr, err)
		}
	case <-ctx.Done():
		_ = mon.Disconnect()
		<-done
		return nil, fmt.Errorf("qmp handshake with %s: %w", addr, ctx.Err())
	}
	return &Client{addr: addr, mon: mon}, nil
}

// Close ends the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
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
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("qmp %s on %s: %w", command, c.addr, ErrClosed)
	}
	type result struct {
		reply []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		reply, err := c.mon.Run(raw)
		done <- result{reply, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		// The reply may still come; nothing may read it as the answer to
		// a later command.
		c.closed = true
		_ = c.mon.Disconnect()
		<-done
		return fmt.Errorf("qmp %s on %s: %w", command, c.addr, ctx.Err())
	}
	if res.err != nil {
		if res.reply == nil && isQEMUError(res.err) {
			return &Error{Command: command, Desc: res.err.Error()}
		}
		return fmt.Errorf("qmp %s on %s: %w", command, c.addr, res.err)
	}
	if out == nil {
		return nil
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(res.reply, &reply); err != nil {
		return fmt.Errorf("decode qmp %s reply: %w", command, err)
	}
	if err := json.Unmarshal(reply.Return, out); err != nil {
		return fmt.Errorf("decode qmp %s result %s: %w", command, reply.Return, err)
	}
	return nil
}

// isQEMUError tells a QMP error reply (go-qemu returns its description as a
// plain error) from a broken connection.
func isQEMUError(err error) bool {
	var netErr net.Error
	var syntaxErr *json.SyntaxError
	return !errors.As(err, &netErr) && !errors.As(err, &syntaxErr) &&
		!errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed)
}
