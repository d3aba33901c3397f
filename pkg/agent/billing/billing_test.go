package billing

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testConfig(url string) Config {
	return Config{CPUMetricName: "effective_compute_seconds", ActiveTimeMetricName: "active_time_seconds",
		CollectEverySeconds: 4, AccumulateEverySeconds: 24,
		Clients: Clients{HTTP: &HTTPClientConfig{URL: url, PushEverySeconds: 24, PushRequestTimeoutSeconds: 5, MaxBatchSize: 3}}}
}

func TestAccumulatorChargesTheSmallerAmount(t *testing.T) {
	a := NewAccumulator(testConfig("x"), "node-a", t0)
	a.Collect(t0, []Sample{{"ep-1", 1}})
	// 4 s at min(1, 2) = 4 cpu-seconds.
	a.Collect(t0.Add(4*time.Second), []Sample{{"ep-1", 2}, {"ep-2", 0.5}})
	// 4 s at min(2, 0.25)... ep-1 drops to 0.25: 1 cpu-second; ep-2 stays 0.5: 2.
	a.Collect(t0.Add(8*time.Second), []Sample{{"ep-1", 0.25}, {"ep-2", 0.5}})
	ev := a.Flush(t0.Add(24 * time.Second))
	if len(ev) != 4 {
		t.Fatalf("%d events, want 2 per endpoint", len(ev))
	}
	want := map[string]int{"ep-1/effective_compute_seconds": 5, "ep-1/active_time_seconds": 8,
		"ep-2/effective_compute_seconds": 2, "ep-2/active_time_seconds": 4}
	for i, e := range ev {
		if w, ok := want[e.EndpointID+"/"+e.MetricName]; !ok || w != e.Value {
			t.Errorf("event %+v, want value %d", e, w)
		}
		if e.Type != "incremental" || !e.StartTime.Equal(t0) || !e.StopTime.Equal(t0.Add(24*time.Second)) {
			t.Errorf("event %+v", e)
		}
		if !strings.HasSuffix(e.IdempotencyKey, "-node-a-"+string(rune('0'+i))+"/4") || !strings.HasPrefix(e.IdempotencyKey, "2026-01-01T00:00:24Z") {
			t.Errorf("key %q", e.IdempotencyKey)
		}
	}
	if ev := a.Flush(t0.Add(48 * time.Second)); len(ev) != 0 {
		t.Fatalf("flush emitted %d events again", len(ev))
	}
}

func TestHTTPSinkBatches(t *testing.T) {
	var mu sync.Mutex
	var batches []int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var body struct{ Events []map[string]any }
		if err := json.Unmarshal(raw, &body); err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad", 400)
			return
		}
		for _, e := range body.Events {
			for _, k := range []string{"idempotency_key", "metric", "type", "endpoint_id", "start_time", "stop_time", "value"} {
				if _, ok := e[k]; !ok {
					http.Error(w, "missing "+k, 400)
					return
				}
			}
		}
		mu.Lock()
		batches = append(batches, len(body.Events))
		mu.Unlock()
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	a := NewAccumulator(cfg, "n", t0)
	a.Collect(t0, []Sample{{"a", 1}, {"b", 1}})
	a.Collect(t0.Add(4*time.Second), []Sample{{"a", 1}, {"b", 1}})
	sink := &HTTPSink{Config: *cfg.Clients.HTTP, Client: srv.Client()}
	if err := sink.Push(context.Background(), a.Flush(t0.Add(24*time.Second))); err != nil {
		t.Fatal(err)
	}
	if len(batches) != 2 || batches[0] != 3 || batches[1] != 1 {
		t.Fatalf("batches %v, want [3 1]", batches)
	}
}

func TestValidate(t *testing.T) {
	c := testConfig("")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "clients.http.url") {
		t.Fatalf("err %v", err)
	}
	c = testConfig("http://x")
	c.Clients.S3 = json.RawMessage(`{}`)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "s3") {
		t.Fatalf("err %v", err)
	}
}
