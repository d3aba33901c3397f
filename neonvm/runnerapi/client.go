package runnerapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// Client calls one runner's HTTP API.
type Client struct {
	base string
	http *http.Client
}

// NewClient calls the runner at base ("http://10.0.0.5:25183"), through hc
// (nil: a client with Timeout). Runners share an hc so that its
// connections are reused.
func NewClient(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = NewHTTPClient()
	}
	return &Client{base: base, http: hc}
}

// NewHTTPClient is an http.Client with the API's Timeout.
func NewHTTPClient() *http.Client {
	return &http.Client{Timeout: Timeout}
}

// BaseURL is the runner API's URL on a runner pod's IP and the VM's
// spec.runnerPort (0: vmv1.DefaultRunnerPort).
func BaseURL(podIP string, port int32) string {
	if port == 0 {
		port = vmv1.DefaultRunnerPort
	}
	return "http://" + net.JoinHostPort(podIP, strconv.Itoa(int(port)))
}

// Ready is GET /ready: nil when the runner answers 200.
func (c *Client) Ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+PathReady, nil)
	if err != nil {
		return fmt.Errorf("runner GET %s: %w", PathReady, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("runner GET %s: %w", PathReady, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("runner GET %s: %s: %s", PathReady, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// CPUCurrent is GET /cpu_current: the vCPU amount the runner reports.
func (c *Client) CPUCurrent(ctx context.Context) (vmv1.MilliCPU, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+PathCPUCurrent, nil)
	if err != nil {
		return 0, fmt.Errorf("runner GET %s: %w", PathCPUCurrent, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("runner GET %s: %w", PathCPUCurrent, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("runner GET %s: %s: %s", PathCPUCurrent, resp.Status, bytes.TrimSpace(raw))
	}
	var body CPUBody
	if err := json.Unmarshal(raw, &body); err != nil {
		return 0, fmt.Errorf("runner GET %s answered %q: %w", PathCPUCurrent, raw, err)
	}
	return body.VCPUs, nil
}

// ChangeCPU is POST /cpu_change: the runner applies cpu (in QMP mode the
// caller has plugged the vCPUs already; in SysfsScaling mode the runner
// has the guest online them).
func (c *Client) ChangeCPU(ctx context.Context, cpu vmv1.MilliCPU) error {
	body, err := json.Marshal(CPUBody{VCPUs: cpu})
	if err != nil {
		return fmt.Errorf("runner POST %s: %w", PathCPUChange, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+PathCPUChange, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("runner POST %s: %w", PathCPUChange, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("runner POST %s %s: %w", PathCPUChange, body, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("runner POST %s %s: %s: %s", PathCPUChange, body, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
