// Command agentpeer serves synthetic endpoints for the agent load test
// (tests/integration/agent_bench_test.go) in a process of its own, so the
// test measures the agent's CPU alone: a steady guest exporter page, a
// vm-monitor that answers the handshake and health checks on any number of
// connections, and a permit API granting every request. It listens on all
// addresses (the VMs are 127.0.x.y) and prints "metrics monitor permit"
// ports on one line; it exits when its stdin closes.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"github.com/vmscale/vmscale/pkg/api"
)

// page is a steady guest: load 0.3 and 300 MiB in use of 1 GiB, one
// compute unit.
const page = `# HELP host_load1 1-minute load average.
# TYPE host_load1 gauge
host_load1 0.3
# HELP host_load5 5-minute load average.
# TYPE host_load5 gauge
host_load5 0.3
# HELP host_memory_total_bytes Memory the guest has (MemTotal).
# TYPE host_memory_total_bytes gauge
host_memory_total_bytes 1.073741824e+09
# HELP host_memory_available_bytes Memory available for new allocations (MemAvailable).
# TYPE host_memory_available_bytes gauge
host_memory_available_bytes 7.5e+08
# HELP host_memory_cached_bytes Page cache (Cached).
# TYPE host_memory_cached_bytes gauge
host_memory_cached_bytes 2e+08
`

func monitor(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	if _, _, err := c.ReadMessage(); err != nil {
		return
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"version":1}`))
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		var m struct {
			Type string `json:"type"`
			ID   uint64 `json:"id"`
		}
		if json.Unmarshal(data, &m) == nil && m.Type == "HealthCheck" {
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"HealthCheck","id":`+strconv.FormatUint(m.ID, 10)+`}`))
		}
	}
}

func permit(w http.ResponseWriter, r *http.Request) {
	var req api.AgentRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad JSON", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(api.PluginResponse{Permit: req.Resources})
}

func serve(h http.Handler) int {
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return l.Addr().(*net.TCPAddr).Port
}

func main() {
	m := serve(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, page)
	}))
	mon := serve(http.HandlerFunc(monitor))
	p := serve(http.HandlerFunc(permit))
	fmt.Printf("%d %d %d\n", m, mon, p)
	_, _ = io.Copy(io.Discard, os.Stdin)
}
