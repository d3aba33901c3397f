package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// cpuState is the runner's view of the VM's vCPU amount. In QMP mode the
// controller plugs the vCPUs itself and tells the runner the fraction to
// apply; the runner remembers it.
type cpuState struct {
	mu       sync.Mutex
	current  vmv1.MilliCPU
	min, max vmv1.MilliCPU
}

// cpuBody is the runner API's body: {"VCPUs": <MilliCPU>} (capital key, as
// NeonVM's controller sends it).
type cpuBody struct {
	VCPUs vmv1.MilliCPU `json:"VCPUs"`
}

// API serves the runner HTTP API: /ready, /cpu_current, /cpu_change.
type API struct {
	cpu   *cpuState
	mode  vmv1.CPUScalingMode
	ready func(context.Context) error
}

// NewAPI makes the API for spec; ready says whether the guest runs.
func NewAPI(spec *vmv1.VirtualMachineSpec, mode vmv1.CPUScalingMode, ready func(context.Context) error) *API {
	c := spec.Guest.CPUs
	return &API{cpu: &cpuState{current: c.Min, min: c.Min, max: c.Max}, mode: mode, ready: ready}
}

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 4*time.Second)
		defer cancel()
		if err := a.ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /cpu_current", func(w http.ResponseWriter, r *http.Request) {
		a.cpu.mu.Lock()
		cur := a.cpu.current
		a.cpu.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(cpuBody{VCPUs: cur})
	})
	mux.HandleFunc("POST /cpu_change", func(w http.ResponseWriter, r *http.Request) {
		var body cpuBody
		raw, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err == nil {
			err = json.Unmarshal(raw, &body)
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("malformed body %q: want {\"VCPUs\": <cpu amount>}: %v", raw, err), http.StatusBadRequest)
			return
		}
		if body.VCPUs < a.cpu.min || body.VCPUs > a.cpu.max {
			http.Error(w, fmt.Sprintf("VCPUs %s is outside spec.guest.cpus %s..%s", body.VCPUs, a.cpu.min, a.cpu.max), http.StatusBadRequest)
			return
		}
		if a.mode == vmv1.CPUScalingModeSysfs {
			http.Error(w, "SysfsScaling: onlining vCPUs through neonvm-daemon is not served by this runner yet", http.StatusNotImplemented)
			return
		}
		a.cpu.mu.Lock()
		a.cpu.current = body.VCPUs
		a.cpu.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	return mux
}

// Serve runs the API on addr until ctx ends, with NeonVM's 5s timeouts.
func (a *API) Serve(ctx context.Context, addr string) error {
	srv := &http.Server{Addr: addr, Handler: a.Handler(), ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("runner API on %s: %w", addr, err)
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	}
}
