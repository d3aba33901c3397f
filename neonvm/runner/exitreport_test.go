package runner

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

func exitedProcess(t *testing.T, script string) (*os.ProcessState, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	err := cmd.Run()
	return cmd.ProcessState, err
}

func TestExitReportMessage(t *testing.T) {
	r := NewExitReport(1 << 10)
	close(r.watched) // no QMP watcher in this test
	r.Output.Write([]byte("booting\r\n[    1.0] some line\n\n"))
	r.Record(goqmp.Event{Event: "STOP"})
	r.Record(goqmp.Event{Event: "SHUTDOWN", Data: map[string]any{"guest": true, "reason": "guest-reset"}})
	state, err := exitedProcess(t, "exit 0")
	msg := r.Message(state, err)
	for _, want := range []string{
		"QEMU exited with status 0: the guest reset itself",
		`last QMP events: STOP; SHUTDOWN {"guest":true,"reason":"guest-reset"}`,
		"last output:\nbooting\n[    1.0] some line",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("report lacks %q:\n%s", want, msg)
		}
	}
	if r.Reason() != "guest-reset" {
		t.Errorf("reason %q", r.Reason())
	}
}

func TestExitReportWithoutEvents(t *testing.T) {
	for _, c := range []struct{ script, want string }{
		{"echo 'qemu-system-x86_64: -drive x: Could not open' >&2; exit 1", "QEMU exited with status 1: no SHUTDOWN event"},
		{"kill -9 $$", "QEMU was killed by signal killed"},
	} {
		r := NewExitReport(1 << 10)
		close(r.watched)
		state, err := exitedProcess(t, c.script)
		if msg := r.Message(state, err); !strings.HasPrefix(msg, c.want) {
			t.Errorf("%s: report %q, want it to start with %q", c.script, msg, c.want)
		}
	}
	r := NewExitReport(16)
	close(r.watched)
	if msg := r.Message(nil, os.ErrNotExist); !strings.Contains(msg, "QEMU did not run") {
		t.Errorf("never started: %q", msg)
	}
}

// The message fits the kubelet's 4096 bytes however much QEMU printed, and
// keeps the last whole lines.
func TestExitReportFitsTheTerminationMessage(t *testing.T) {
	r := NewExitReport(64 << 10)
	close(r.watched)
	for i := 0; i < 5000; i++ {
		r.Output.Write([]byte(strings.Repeat("x", 40) + "\n"))
	}
	r.Output.Write([]byte("the very last line\n"))
	for i := 0; i < 20; i++ {
		r.Record(goqmp.Event{Event: "RESET", Data: map[string]any{"guest": true, "reason": "guest-reset"}})
	}
	msg := r.Message(nil, nil)
	if len(msg) > terminationMessageMax {
		t.Errorf("report of %d bytes", len(msg))
	}
	if !strings.HasSuffix(msg, "\nthe very last line") {
		t.Errorf("report does not end with the last line: ...%q", msg[len(msg)-60:])
	}
	if n := strings.Count(msg, "RESET"); n != exitReportEvents {
		t.Errorf("%d events kept, want %d", n, exitReportEvents)
	}
}

func TestWriteTerminationMessage(t *testing.T) {
	dir := t.TempDir()
	// No file: not in a container; nothing written, no error.
	missing := filepath.Join(dir, "none")
	if err := WriteTerminationMessage(missing, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("created %s", missing)
	}
	p := filepath.Join(dir, "termination-log")
	if err := os.WriteFile(p, []byte("an older, longer message"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTerminationMessage(p, "report"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "report" {
		t.Fatalf("termination log holds %q", b)
	}
}
