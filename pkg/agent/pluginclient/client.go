// Package pluginclient is the agent's side of the scheduler plugin's permit
// API (docs/protocols.md#permit-protocol, v5.0): it finds the scheduler as a
// Ready pod in kube-system labelled name=<schedulerName> and POSTs
// AgentRequests to it on :10299.
package pluginclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/vmscale/vmscale/pkg/api"
)

// SchedulerNamespace is where the agent looks for the scheduler.
const SchedulerNamespace = "kube-system"

// ErrNoScheduler is returned when no Ready scheduler pod has an IP.
var ErrNoScheduler = errors.New("no ready scheduler pod")

// Finder locates the scheduler pod.
type Finder struct {
	Reader        client.Reader
	SchedulerName string
	// CacheFor keeps an answer this long (0: ask every time); every runner
	// asks before each request, and listing from the cache is not free.
	CacheFor time.Duration
	Now      func() time.Time // time.Now if nil

	mu     sync.Mutex
	ip     string
	expiry time.Time
}

// Forget drops the remembered answer (after a request to it failed).
func (f *Finder) Forget() {
	f.mu.Lock()
	f.ip = ""
	f.mu.Unlock()
}

// SchedulerIP is the pod IP of a Ready scheduler pod (the oldest, when a
// rollout briefly runs two).
func (f *Finder) SchedulerIP(ctx context.Context) (string, error) {
	if f.CacheFor <= 0 {
		return f.find(ctx)
	}
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ip != "" && now().Before(f.expiry) {
		return f.ip, nil
	}
	ip, err := f.find(ctx)
	if err != nil {
		return "", err
	}
	f.ip, f.expiry = ip, now().Add(f.CacheFor)
	return ip, nil
}

func (f *Finder) find(ctx context.Context) (string, error) {
	var pods corev1.PodList
	if err := f.Reader.List(ctx, &pods, client.InNamespace(SchedulerNamespace), client.MatchingLabels{"name": f.SchedulerName}); err != nil {
		return "", fmt.Errorf("list scheduler pods: %w", err)
	}
	ready := make([]*corev1.Pod, 0, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && podReady(p) {
			ready = append(ready, p)
		}
	}
	if len(ready) == 0 {
		return "", fmt.Errorf("%w: %s/name=%s", ErrNoScheduler, SchedulerNamespace, f.SchedulerName)
	}
	sort.Slice(ready, func(i, j int) bool {
		return ready[i].CreationTimestamp.Before(&ready[j].CreationTimestamp)
	})
	return ready[0].Status.PodIP, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Client sends permit requests.
type Client struct {
	HTTP *http.Client
	Port int
	// Slots, if set, bounds the requests in flight (a buffered channel of
	// that size): runners' ticks come in bursts, and queueing them reuses
	// kept-alive connections where a free-for-all would dial new ones.
	Slots chan struct{}
}

// StatusError is a reply other than 200: the plugin's text/plain message.
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("plugin replied %d: %s", e.Status, e.Msg)
}

// Encode is the request body as it goes on the wire.
func Encode(req *api.AgentRequest) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode plugin request: %w", err)
	}
	if len(body) > api.MaxAgentRequestBytes {
		return nil, fmt.Errorf("plugin request is %d bytes, over the %d-byte limit", len(body), api.MaxAgentRequestBytes)
	}
	return body, nil
}

// Request POSTs req to the scheduler at host; ctx carries the timeout.
func (c *Client) Request(ctx context.Context, host string, req *api.AgentRequest) (api.PluginResponse, error) {
	var out api.PluginResponse
	body, err := Encode(req)
	if err != nil {
		return out, err
	}
	if c.Slots != nil {
		select {
		case c.Slots <- struct{}{}:
			defer func() { <-c.Slots }()
		case <-ctx.Done():
			return out, fmt.Errorf("plugin request: waiting for a free connection: %w", ctx.Err())
		}
	}
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(c.Port)) + "/"
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return out, fmt.Errorf("plugin request to %s: %w", url, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(hreq)
	if err != nil {
		return out, fmt.Errorf("plugin request to %s: %w", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return out, fmt.Errorf("read plugin reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return out, &StatusError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(raw))}
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return out, fmt.Errorf("plugin reply has content type %q, want application/json", resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return out, fmt.Errorf("decode plugin reply %q: %w", raw, err)
	}
	return out, nil
}
