package scrape

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Target scrapes one URL over one kept-alive connection of its own. A
// runner scrapes its VM every few seconds for as long as it lives, so this
// skips the shared transport's connection pool and its goroutine handoffs:
// a write, a read, on the runner's goroutine. Not safe for concurrent use.
type Target struct {
	Addr string // host:port
	Path string // "/metrics"
	// Timeout bounds each scrape (10 s if zero), besides ctx: a context
	// ending mid-read is noticed at the timeout, which saves a timer per
	// scrape.
	Timeout time.Duration

	conn net.Conn
	br   *bufio.Reader
	req  []byte
}

// Close drops the connection.
func (t *Target) Close() {
	if t.conn != nil {
		_ = t.conn.Close()
		t.conn, t.br = nil, nil
	}
}

// Get fetches the page into buf (reset first) by ctx's deadline. A failure
// on a reused connection is retried once on a fresh one.
func (t *Target) Get(ctx context.Context, buf *bytes.Buffer) ([]byte, error) {
	reused := t.conn != nil
	b, err := t.get(ctx, buf)
	if err != nil && reused && ctx.Err() == nil {
		b, err = t.get(ctx, buf)
	}
	if err != nil {
		return nil, fmt.Errorf("scrape http://%s%s: %w", t.Addr, t.Path, err)
	}
	return b, nil
}

func (t *Target) get(ctx context.Context, buf *bytes.Buffer) ([]byte, error) {
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if t.conn == nil {
		d := net.Dialer{Deadline: deadline}
		c, err := d.DialContext(ctx, "tcp", t.Addr)
		if err != nil {
			return nil, err
		}
		t.conn, t.br = c, bufio.NewReaderSize(c, 4096)
	}
	if t.req == nil {
		t.req = []byte("GET " + t.Path + " HTTP/1.1\r\nHost: " + t.Addr + "\r\nUser-Agent: vmscale-autoscaler-agent\r\nAccept: text/plain\r\n\r\n")
	}
	_ = t.conn.SetDeadline(deadline)
	if _, err := t.conn.Write(t.req); err != nil {
		t.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(t.br, nil)
	if err != nil {
		t.Close()
		return nil, err
	}
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, maxPageBytes+1))
	_ = resp.Body.Close()
	if err != nil {
		t.Close()
		return nil, err
	}
	if resp.Close {
		t.Close()
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	if n > maxPageBytes {
		t.Close()
		return nil, fmt.Errorf("page larger than %d bytes", maxPageBytes)
	}
	return buf.Bytes(), nil
}
