package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// cpuState is the runner's view of the VM's vCPU amount. In QMP mode the
// controller plugs the vCPUs itself and tells the runner the fraction to
// apply; the runner remembers it.
type cpuState struct {
	mu       sync.Mutex
	current  vmv1.MilliCPU
	min, max vmv1.MilliCPU
}

// API serves the runner HTTP API (the paths and bodies of package
// runnerapi).
type API struct {
	cpu   *cpuState
	mode  vmv1.CPUScalingMode
	ready func(context.Context) error
	// daemon is neonvm-daemon's base URL in the guest (SysfsScaling).
	daemon string
	client *http.Client
	// GuestReadiness makes /ready ask the guest itself (neonvm-daemon
	// answering) in every scaling mode, not only QEMU running: a runner
	// pod is Ready when its guest has booted. Set in a pod.
	GuestReadiness bool
}

// ErrIncoming is what the ready function returns while QEMU waits for an
// incoming migration: running, with no guest to ask yet.
var ErrIncoming = errors.New("waiting for an incoming migration")

// NewAPI makes the API for spec; ready says whether the guest runs;
// daemonAddr is where neonvm-daemon listens (host:port), used in
// SysfsScaling mode.
func NewAPI(spec *vmv1.VirtualMachineSpec, mode vmv1.CPUScalingMode, ready func(context.Context) error, daemonAddr string) *API {
	c := spec.Guest.CPUs
	return &API{cpu: &cpuState{current: c.Min, min: c.Min, max: c.Max}, mode: mode, ready: ready,
		daemon: "http://" + daemonAddr, client: &http.Client{Timeout: 5 * time.Second}}
}

// checkReady is ready, and in SysfsScaling mode (or with GuestReadiness)
// also neonvm-daemon answering: the runner can do nothing for the guest's
// CPUs without it, and it answers only once the guest has booted.
func (a *API) checkReady(ctx context.Context) error {
	if a.ready != nil {
		err := a.ready(ctx)
		if errors.Is(err, ErrIncoming) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	if a.mode == vmv1.CPUScalingModeSysfs || a.GuestReadiness {
		if _, err := a.daemonCPU(ctx); err != nil {
			return err
		}
	}
	return nil
}

// daemonCPU asks neonvm-daemon for the online CPUs, in milli-CPUs.
func (a *API) daemonCPU(ctx context.Context) (vmv1.MilliCPU, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.daemon+"/cpu", nil)
	if err != nil {
		return 0, fmt.Errorf("neonvm-daemon GET /cpu: %w", err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("neonvm-daemon GET /cpu: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("neonvm-daemon GET /cpu: %s: %s", resp.Status, body)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(body)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("neonvm-daemon GET /cpu answered %q", body)
	}
	return vmv1.MilliCPU(n), nil
}

// SysfsCurrent is what /cpu_current answers in SysfsScaling mode: the guest
// onlines whole CPUs, so a fractional amount set by /cpu_change (250m, 1.5)
// is current while the guest has it rounded up online; otherwise (the guest
// rebooted, or nothing was set yet) the online CPUs are. Without this a
// fractional spec would never match the status, and the VM would stay
// Scaling.
func SysfsCurrent(online, last vmv1.MilliCPU) vmv1.MilliCPU {
	if last > 0 && (last+999)/1000*1000 == online {
		return last
	}
	return online
}

// ReadyTimeout bounds /ready: under the kubelet's default probe timeout
// (1 s), so a guest still booting gets a 503 that says so, not a probe
// timed out on the kubelet's side ("context deadline exceeded").
const ReadyTimeout = 900 * time.Millisecond

// daemonStatus maps a failure to reach neonvm-daemon to the runner API's
// answer: 504 on a timeout, 502 otherwise (as NeonVM's runner does).
func daemonStatus(err error) int {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(http.MethodGet+" "+runnerapi.PathReady, func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := a.checkReady(ctx); err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("the guest did not answer within %v (still booting?): %w", ReadyTimeout, err)
			}
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc(http.MethodGet+" "+runnerapi.PathCPUCurrent, func(w http.ResponseWriter, r *http.Request) {
		a.cpu.mu.Lock()
		cur := a.cpu.current
		a.cpu.mu.Unlock()
		if a.mode == vmv1.CPUScalingModeSysfs {
			online, err := a.daemonCPU(r.Context())
			if err != nil {
				http.Error(w, err.Error(), daemonStatus(err))
				return
			}
			cur = SysfsCurrent(online, cur)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(runnerapi.CPUBody{VCPUs: cur})
	})
	mux.HandleFunc(http.MethodPost+" "+runnerapi.PathCPUChange, func(w http.ResponseWriter, r *http.Request) {
		var body runnerapi.CPUBody
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
			req, _ := http.NewRequestWithContext(r.Context(), http.MethodPut, a.daemon+"/cpu",
				strings.NewReader(strconv.FormatUint(uint64(body.VCPUs), 10)))
			resp, err := a.client.Do(req)
			if err != nil {
				http.Error(w, "neonvm-daemon PUT /cpu: "+err.Error(), daemonStatus(err))
				return
			}
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				http.Error(w, fmt.Sprintf("neonvm-daemon PUT /cpu: %s: %s", resp.Status, msg), http.StatusBadGateway)
				return
			}
		}
		a.cpu.mu.Lock()
		a.cpu.current = body.VCPUs
		a.cpu.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	return mux
}

// Serve runs the API on addr until ctx ends, with NeonVM's timeouts
// (runnerapi.Timeout).
func (a *API) Serve(ctx context.Context, addr string) error {
	t := runnerapi.Timeout
	srv := &http.Server{Addr: addr, Handler: a.Handler(), ReadTimeout: t, WriteTimeout: t, ReadHeaderTimeout: t}
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
