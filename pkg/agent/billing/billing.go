// Package billing turns the CPU the VMs on a node have into billing
// events (docs/protocols.md#billing-events): every collect period it
// samples each billable VM's vCPUs, charging each slice of time at the
// smaller of the old and new amount; every accumulate period it emits,
// per endpoint, the CPU-seconds and active seconds as incremental events,
// and an HTTP sink POSTs them as {"events":[…]}.
package billing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"
)

// Config is the config file's "billing".
type Config struct {
	CPUMetricName          string  `json:"cpuMetricName"`
	ActiveTimeMetricName   string  `json:"activeTimeMetricName"`
	CollectEverySeconds    uint    `json:"collectEverySeconds"`
	AccumulateEverySeconds uint    `json:"accumulateEverySeconds"`
	Clients                Clients `json:"clients"`
}

// Clients are the sinks; vmscale has the HTTP one.
type Clients struct {
	HTTP      *HTTPClientConfig `json:"http,omitempty"`
	S3        json.RawMessage   `json:"s3,omitempty"`
	AzureBlob json.RawMessage   `json:"azureBlob,omitempty"`
}

// HTTPClientConfig is "billing.clients.http".
type HTTPClientConfig struct {
	URL                       string `json:"url"`
	Method                    string `json:"method"`
	PushEverySeconds          uint   `json:"pushEverySeconds"`
	PushRequestTimeoutSeconds uint   `json:"pushRequestTimeoutSeconds"`
	MaxBatchSize              uint   `json:"maxBatchSize"`
}

// Validate names the first bad key.
func (c *Config) Validate() error {
	switch {
	case c.CPUMetricName == "" || c.ActiveTimeMetricName == "":
		return errors.New("cpuMetricName and activeTimeMetricName are required")
	case c.CollectEverySeconds == 0 || c.AccumulateEverySeconds == 0:
		return errors.New("collectEverySeconds and accumulateEverySeconds must be set to non-zero values")
	case len(c.Clients.S3) > 0 || len(c.Clients.AzureBlob) > 0:
		return errors.New("clients.s3 and clients.azureBlob are not supported by vmscale yet")
	}
	if h := c.Clients.HTTP; h != nil {
		switch {
		case h.URL == "":
			return errors.New("clients.http.url is required")
		case h.PushEverySeconds == 0 || h.PushRequestTimeoutSeconds == 0 || h.MaxBatchSize == 0:
			return errors.New("clients.http.pushEverySeconds, pushRequestTimeoutSeconds and maxBatchSize must be set to non-zero values")
		}
	}
	return nil
}

// Sample is one billable VM at a collection.
type Sample struct {
	EndpointID string
	VCPUs      float64
}

// Event is one billing record.
type Event struct {
	IdempotencyKey string    `json:"idempotency_key"`
	MetricName     string    `json:"metric"`
	Type           string    `json:"type"`
	EndpointID     string    `json:"endpoint_id"`
	StartTime      time.Time `json:"start_time"`
	StopTime       time.Time `json:"stop_time"`
	Value          int       `json:"value"`
}

// Accumulator is the pure part: samples in, events out. Not safe for
// concurrent use.
type Accumulator struct {
	cfg      Config
	hostname string
	last     map[string]float64 // endpoint → vCPUs at the last collection
	lastAt   time.Time
	cpuSecs  map[string]float64
	active   map[string]float64
	start    time.Time
}

// NewAccumulator starts accumulating at now.
func NewAccumulator(cfg Config, hostname string, now time.Time) *Accumulator {
	return &Accumulator{cfg: cfg, hostname: hostname, last: map[string]float64{}, cpuSecs: map[string]float64{},
		active: map[string]float64{}, lastAt: now, start: now}
}

// Collect records the VMs alive at now. An endpoint present in both this
// and the previous collection is charged min(old, new) for the slice.
func (a *Accumulator) Collect(now time.Time, samples []Sample) {
	dt := now.Sub(a.lastAt).Seconds()
	cur := make(map[string]float64, len(samples))
	for _, s := range samples {
		cur[s.EndpointID] += s.VCPUs
	}
	if dt > 0 {
		for ep, v := range cur {
			if old, ok := a.last[ep]; ok {
				a.cpuSecs[ep] += math.Min(old, v) * dt
				a.active[ep] += dt
			}
		}
	}
	a.last, a.lastAt = cur, now
}

// Flush emits the events accumulated since the last flush, two per
// endpoint, sorted by endpoint.
func (a *Accumulator) Flush(now time.Time) []Event {
	eps := make([]string, 0, len(a.active))
	for ep := range a.active {
		eps = append(eps, ep)
	}
	sort.Strings(eps)
	events := make([]Event, 0, 2*len(eps))
	for _, ep := range eps {
		for _, m := range []struct {
			name string
			v    float64
		}{{a.cfg.CPUMetricName, a.cpuSecs[ep]}, {a.cfg.ActiveTimeMetricName, a.active[ep]}} {
			events = append(events, Event{MetricName: m.name, Type: "incremental", EndpointID: ep,
				StartTime: a.start.UTC(), StopTime: now.UTC(), Value: int(math.Round(m.v))})
		}
	}
	for i := range events {
		events[i].IdempotencyKey = fmt.Sprintf("%s-%s-%d/%d", now.UTC().Format("2006-01-02T15:04:05.999999Z"), a.hostname, i, len(events))
	}
	a.cpuSecs, a.active, a.start = map[string]float64{}, map[string]float64{}, now
	return events
}

// HTTPSink posts batches of events.
type HTTPSink struct {
	Config HTTPClientConfig
	Client *http.Client
}

// Push sends events in batches of at most MaxBatchSize.
func (s *HTTPSink) Push(ctx context.Context, events []Event) error {
	method := s.Config.Method
	if method == "" {
		method = http.MethodPost
	}
	size := int(max(s.Config.MaxBatchSize, 1))
	for len(events) > 0 {
		n := min(size, len(events))
		body, err := json.Marshal(struct {
			Events []Event `json:"events"`
		}{events[:n]})
		if err != nil {
			return fmt.Errorf("encode billing events: %w", err)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Duration(s.Config.PushRequestTimeoutSeconds)*time.Second)
		req, err := http.NewRequestWithContext(rctx, method, s.Config.URL, bytes.NewReader(body))
		if err != nil {
			cancel()
			return fmt.Errorf("billing request: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := s.Client.Do(req)
		if err != nil {
			cancel()
			return fmt.Errorf("push %d billing events to %s: %w", n, s.Config.URL, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("push %d billing events to %s: status %s", n, s.Config.URL, strconv.Itoa(resp.StatusCode))
		}
		events = events[n:]
	}
	return nil
}
