package guestexec

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscale/vmscale/neonvm/qemu"
)

// The host client against the guest server over a real unix socket, with
// the real shell runner.
func TestExecRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "exec.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = Serve(ctx, c, RunShell) }()
		}
	}()
	r, err := Exec(ctx, sock, "echo hello; echo err >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 3 || !strings.Contains(r.Output, "hello") || !strings.Contains(r.Output, "err") {
		t.Fatalf("reply %+v", r)
	}
	short, cancel2 := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel2()
	r, err = Exec(short, sock, "sleep 10")
	if err == nil && r.Error == "" {
		t.Fatalf("a command past its deadline returned %+v", r)
	}
}

func TestMalformedRequestGetsAnErrorReply(t *testing.T) {
	var out strings.Builder
	rw := struct {
		*strings.Reader
		*strings.Builder
	}{strings.NewReader("not json\n{\"command\":\"true\"}\n"), &out}
	if err := Serve(context.Background(), rw, RunShell); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "malformed request") || !strings.Contains(lines[1], `"exitCode":0`) {
		t.Fatalf("replies %q", lines)
	}
}

func TestPortNameMatchesQEMU(t *testing.T) {
	if PortName != qemu.ExecPortName {
		t.Fatalf("guest port %q != QEMU's %q", PortName, qemu.ExecPortName)
	}
}
