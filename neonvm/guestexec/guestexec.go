// Package guestexec is vmscale's way into a running guest for tests and
// operators: a line-delimited JSON request/reply protocol over a
// virtio-serial port (tech.vmscale.exec). The host connects to the QEMU
// chardev socket and sends a shell command; neonvm-daemon in the guest runs
// it with sh -c and answers with its output and exit code.
package guestexec

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"time"
)

// PortName is the virtio-serial port's name in the guest.
const PortName = "tech.vmscale.exec"

// Request asks the guest to run a shell command.
type Request struct {
	// ID is echoed in the reply, so a client never takes a late reply to
	// an abandoned request for its own.
	ID             uint64 `json:"id,omitempty"`
	Command        string `json:"command"`
	TimeoutSeconds int    `json:"timeoutSeconds,omitempty"`
}

// Reply is the command's combined output and exit code; Error says why it
// could not run (or was killed on its timeout).
type Reply struct {
	ID       uint64 `json:"id,omitempty"`
	Output   string `json:"output"`
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
}

// MaxLine bounds one request or reply.
const MaxLine = 16 << 20

// Serve answers requests read from rw until it reads EOF or ctx ends.
func Serve(ctx context.Context, rw io.ReadWriter, run func(context.Context, Request) Reply) error {
	sc := bufio.NewScanner(rw)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	enc := json.NewEncoder(rw)
	for sc.Scan() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var req Request
		var reply Reply
		if err := json.Unmarshal(line, &req); err != nil {
			reply = Reply{ExitCode: -1, Error: fmt.Sprintf("malformed request: %v", err)}
		} else {
			reply = run(ctx, req)
			reply.ID = req.ID
		}
		if err := enc.Encode(reply); err != nil {
			return fmt.Errorf("send reply: %w", err)
		}
	}
	return sc.Err()
}

// RunShell runs req.Command with /bin/sh -c (in the guest), bounded by its
// timeout (default 60s).
func RunShell(ctx context.Context, req Request) Reply {
	timeout := time.Duration(req.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", req.Command)
	out, err := cmd.CombinedOutput()
	reply := Reply{Output: string(out)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		reply.ExitCode, reply.Error = -1, fmt.Sprintf("killed after %s", timeout)
	case errors.As(err, &exitErr):
		reply.ExitCode = exitErr.ExitCode()
	default:
		reply.ExitCode, reply.Error = -1, err.Error()
	}
	return reply
}

// Exec connects to the exec channel's host socket (QEMU's chardev) and runs
// command in the guest.
func Exec(ctx context.Context, socket, command string) (Reply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Reply{}, fmt.Errorf("connect to the guest exec channel %s: %w", socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req := Request{ID: rand.Uint64() | 1, Command: command}
	if dl, ok := ctx.Deadline(); ok {
		req.TimeoutSeconds = max(1, int(time.Until(dl).Seconds()))
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Reply{}, fmt.Errorf("send %q to the guest: %w", command, err)
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	for {
		if !sc.Scan() {
			err := sc.Err()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return Reply{}, fmt.Errorf("read the guest's reply to %q: %w", command, err)
		}
		var reply Reply
		if err := json.Unmarshal(sc.Bytes(), &reply); err != nil {
			return Reply{}, fmt.Errorf("decode the guest's reply to %q: %w", command, err)
		}
		if reply.ID == req.ID {
			return reply, nil
		}
		// A late reply to an earlier, abandoned request: skip it.
	}
}
