package scrape

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkParseSystem is the parse of one exporter page.
func BenchmarkParseSystem(b *testing.B) {
	page := []byte(goodSystem)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSystem(page); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTargetGet is one scrape over a kept-alive loopback connection,
// the serving side included (it runs in this process).
func BenchmarkTargetGet(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(goodSystem)) }))
	defer srv.Close()
	tg := &Target{Addr: strings.TrimPrefix(srv.URL, "http://"), Path: "/metrics"}
	defer tg.Close()
	var buf bytes.Buffer
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tg.Get(ctx, &buf); err != nil {
			b.Fatal(err)
		}
	}
}
