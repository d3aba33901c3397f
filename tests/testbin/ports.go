package testbin

import (
	"net"
	"testing"
)

var handedOut = map[int]bool{}

// FreePort is a loopback TCP port nothing listens on, for a process the
// test starts. The kernel may hand the same ephemeral port out again once
// its probe listener is closed, so a port is never returned twice in one
// test binary: two ports asked for one process (metrics and health probe,
// say) always differ.
func FreePort(t testing.TB) int {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut[port] {
			handedOut[port] = true
			return port
		}
	}
	t.Fatal("find a free port: the kernel kept handing out ports already given to this test binary")
	return 0
}
