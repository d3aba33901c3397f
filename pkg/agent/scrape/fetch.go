package scrape

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
)

// maxPageBytes caps a metrics page; the exporters serve a few KiB.
const maxPageBytes = 1 << 20

// Fetcher GETs metrics pages.
type Fetcher struct {
	Client *http.Client
}

// Get fetches url into buf (reset first) and returns its bytes. ctx bounds
// the whole request.
func (f *Fetcher) Get(ctx context.Context, url string, buf *bytes.Buffer) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := f.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxPageBytes))
		return nil, fmt.Errorf("scrape %s: status %s", url, resp.Status)
	}
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, maxPageBytes+1))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: read: %w", url, err)
	}
	if n > maxPageBytes {
		return nil, fmt.Errorf("scrape %s: page larger than %d bytes", url, maxPageBytes)
	}
	return buf.Bytes(), nil
}
