package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/vmscale/vmscale/neonvm/qmp"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// Why QEMU stopped is always told (docs/neonvm.md#when-qemu-stops): the
// runner watches QEMU's QMP events on a socket of its own and keeps the last
// lines QEMU and the guest console printed; when QEMU exits, one message
// says how (exit status or signal), why (the SHUTDOWN event's reason), what
// happened before (the last events) and what was printed last. It goes to
// the runner's log and to the container's termination message, where the
// controller reads it into the VM's events and status.

// DefaultTerminationLog is the kubelet's default terminationMessagePath.
const DefaultTerminationLog = "/dev/termination-log"

// terminationMessageMax is what the kubelet keeps of a termination message
// (4096 bytes), with room to spare.
const terminationMessageMax = 4000

// exitReportEvents is how many of QEMU's last QMP events the report keeps.
const exitReportEvents = 8

// ExitReport gathers why QEMU stopped. Output is where QEMU's stdout and
// stderr go besides the runner's own.
type ExitReport struct {
	Output *TailWriter

	mu      sync.Mutex
	events  []string
	reason  string // the last SHUTDOWN's reason
	watched chan struct{}
}

// NewExitReport keeps the last tailBytes bytes of QEMU's output.
func NewExitReport(tailBytes int) *ExitReport {
	return &ExitReport{Output: NewTailWriter(tailBytes), watched: make(chan struct{})}
}

// Watch records QEMU's QMP events from the socket sock until QEMU closes
// it (it exits) or ctx ends. QEMU creates the socket as it starts: Watch
// dials until it answers.
func (r *ExitReport) Watch(ctx context.Context, sock string, log *slog.Logger) {
	defer close(r.watched)
	var c *qmp.Client
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		var err error
		c, err = qmp.Dial(dctx, "unix", sock)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer c.Close()
	for {
		select {
		case ev := <-c.Events():
			r.Record(ev)
			if ev.Event == "SHUTDOWN" {
				log.Info("QEMU is shutting down", "reason", r.Reason())
			}
		case <-c.Done():
			// Events read before the connection closed are buffered.
			for {
				select {
				case ev := <-c.Events():
					r.Record(ev)
				default:
					return
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

// noiseEvents say nothing about why QEMU stopped and would crowd out the
// events that do.
var noiseEvents = map[string]bool{"NIC_RX_FILTER_CHANGED": true, "RTC_CHANGE": true}

// Record notes one QMP event.
func (r *ExitReport) Record(ev goqmp.Event) {
	if noiseEvents[ev.Event] {
		return
	}
	line := ev.Event
	if len(ev.Data) > 0 {
		if b, err := json.Marshal(ev.Data); err == nil {
			line += " " + string(b)
		}
	}
	if ts := ev.Timestamp; ts.Seconds > 0 {
		line = time.Unix(ts.Seconds, ts.Microseconds*1000).UTC().Format("15:04:05.000") + " " + line
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, line)
	if len(r.events) > exitReportEvents {
		r.events = r.events[len(r.events)-exitReportEvents:]
	}
	if ev.Event == "SHUTDOWN" {
		if reason, ok := ev.Data["reason"].(string); ok {
			r.reason = reason
		}
	}
}

// Reason is the last SHUTDOWN event's reason ("" before one).
func (r *ExitReport) Reason() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reason
}

// Message is the report on QEMU's end: waitErr is what waiting for it
// returned, state its process state (nil if it never ran). It waits up to
// a second for the event watcher to read QEMU's last events.
func (r *ExitReport) Message(state *os.ProcessState, waitErr error) string {
	select {
	case <-r.watched:
	case <-time.After(time.Second):
	}
	r.mu.Lock()
	events, reason := append([]string(nil), r.events...), r.reason
	r.mu.Unlock()

	var b strings.Builder
	fmt.Fprintf(&b, "QEMU %s: %s", exitStatus(state, waitErr), ShutdownCause(reason))
	if len(events) > 0 {
		fmt.Fprintf(&b, "\nlast QMP events: %s", strings.Join(events, "; "))
	}
	head := b.String()
	tail := r.Output.Lines(terminationMessageMax - len(head) - len(runnerapi.ReportOutputSep))
	if tail != "" {
		head += runnerapi.ReportOutputSep + tail
	}
	return head
}

// WriteTerminationMessage writes msg to path, the termination log, if it
// exists: the kubelet creates it in a container; a runner run as a local
// process has none and writes nothing.
func WriteTerminationMessage(path, msg string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("termination message: %w", err)
	}
	_, err = f.WriteString(msg)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("termination message %s: %w", path, err)
	}
	return nil
}

// exitStatus says how the process ended.
func exitStatus(state *os.ProcessState, waitErr error) string {
	if state == nil {
		if waitErr != nil {
			return "did not run: " + waitErr.Error()
		}
		return "did not run"
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "was killed by signal " + ws.Signal().String()
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return fmt.Sprintf("exited with status %d (%v)", state.ExitCode(), waitErr)
	}
	return fmt.Sprintf("exited with status %d", state.ExitCode())
}

// ShutdownCause explains a SHUTDOWN event's reason (QEMU's ShutdownCause
// enum); "" is no SHUTDOWN event at all.
func ShutdownCause(reason string) string {
	switch reason {
	case "":
		return "no SHUTDOWN event (QEMU failed or was killed; see its last output)"
	case "guest-shutdown":
		return "the guest powered off (SHUTDOWN reason guest-shutdown)"
	case "guest-reset":
		return "the guest reset itself: a reboot, a kernel panic (panic=-1) or a triple fault; -no-reboot turns it into an exit (SHUTDOWN reason guest-reset)"
	case "guest-panic":
		return "the guest kernel panicked (SHUTDOWN reason guest-panic)"
	case "host-qmp-quit":
		return "told to quit over QMP (SHUTDOWN reason host-qmp-quit): the end of a migration source, or an operator"
	case "host-qmp-system-reset":
		return "reset over QMP (system_reset); -no-reboot turns it into an exit (SHUTDOWN reason host-qmp-system-reset)"
	case "host-signal":
		return "QEMU got a termination signal (SHUTDOWN reason host-signal)"
	case "host-ui":
		return "closed from QEMU's user interface (SHUTDOWN reason host-ui)"
	case "host-error":
		return "QEMU hit an error it cannot run past (SHUTDOWN reason host-error)"
	}
	return "SHUTDOWN reason " + reason
}

// TailWriter keeps the last bytes written to it. It lets its buffer grow
// to twice what it keeps before it drops the oldest bytes, so each write
// (every line of the guest console) costs its own size, not a move of the
// whole tail.
type TailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

// NewTailWriter keeps the last max bytes.
func NewTailWriter(max int) *TailWriter { return &TailWriter{max: max} }

func (t *TailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// Lines is the kept output's last whole lines within limit bytes, carriage
// returns and empty lines dropped.
func (t *TailWriter) Lines(limit int) string {
	t.mu.Lock()
	data := t.buf[max(0, len(t.buf)-t.max):]
	data = bytes.ReplaceAll(data, []byte("\r"), nil) // a copy
	t.mu.Unlock()
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return runnerapi.LastLines(lines, limit)
}
