package qmp

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// A reply immediately followed by an event in the same write (what QEMU does
// after device_add) must reach the caller intact; go-qemu's SocketMonitor
// hands it over in a buffer the event then overwrites.
func TestReplyFollowedByEventIsIntact(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\r\n"))
		r.ReadBytes('\n')
		c.Write([]byte(`{"return": {}}` + "\r\n"))
		for i := 0; ; i++ {
			if _, err := r.ReadBytes('\n'); err != nil {
				return
			}
			// Reply, then at once a long event and an error-free filler.
			c.Write([]byte(`{"return": {"running": true, "status": "running"}}` + "\r\n" +
				`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "ACPI_DEVICE_OST", "data": {"info": {"device": "` +
				strings.Repeat("x", 200) + `"}}}` + "\r\n"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 200; i++ {
		st, err := c.QueryStatus(ctx)
		if err != nil || !st.Running || st.Status != "running" {
			t.Fatalf("call %d: %+v, %v", i, st, err)
		}
	}
}

func TestGreetingMustBeQMP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-OpenSSH\r\n"))
			<-done
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Dial(ctx, "tcp", l.Addr().String()); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Fatalf("Dial to a non-QMP server = %v", err)
	}
}
