// Package permit serves the agents' permit API (docs/protocols.md#permit-protocol): HTTP
// POSTs of at most 1 KiB holding an AgentRequest, answered with a
// PluginResponse (200, application/json) or a text/plain error whose status
// says who is at fault. What to permit is the Backend's business.
package permit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/vmscale/vmscale/pkg/api"
)

// Backend decides a permit. Errors it returns carry their status with
// Errorf; any other error is a 500.
type Backend interface {
	Permit(ctx context.Context, req *api.AgentRequest) (api.Resources, error)
}

// Error is a failure with the HTTP status to answer it with.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Errorf makes an Error.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// Outcome labels a finished request in metrics.
type Outcome string

const (
	OutcomeOK         Outcome = "ok"
	OutcomeBadRequest Outcome = "bad_request"
	OutcomeNotFound   Outcome = "not_found"
	OutcomeError      Outcome = "error"
)

// Observer is told about every request (metrics).
type Observer func(outcome Outcome, elapsed time.Duration)

// Verbosities of the handler's lines, as klog -v levels: the scheduler
// bridges slog level -n to V(n).
const (
	levelRefused = slog.Level(-2)
	levelGranted = slog.Level(-4)
)

// Handler serves the permit API.
type Handler struct {
	Backend Backend
	// Log gets the handler's lines; nil drops them.
	Log     *slog.Logger
	Observe Observer
	// Now is the clock for latency; time.Now if nil.
	Now func() time.Time
}

// ServeHTTP answers one agent request. Any path is accepted, as in Neon.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := h.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	status, body, msg := h.serve(r)
	outcome := OutcomeOK
	switch {
	case status == http.StatusOK:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	default:
		switch status {
		case http.StatusBadRequest:
			outcome = OutcomeBadRequest
		case http.StatusNotFound:
			outcome = OutcomeNotFound
		default:
			outcome = OutcomeError
		}
		http.Error(w, msg, status)
	}
	if h.Observe != nil {
		h.Observe(outcome, now().Sub(start))
	}
}

func (h *Handler) serve(r *http.Request) (int, []byte, string) {
	if r.Method != http.MethodPost {
		return http.StatusBadRequest, nil, "must be POST"
	}
	// Read one byte past the cap to tell "exactly 1 KiB" from "more".
	raw, err := io.ReadAll(io.LimitReader(r.Body, api.MaxAgentRequestBytes+1))
	if err != nil {
		return http.StatusBadRequest, nil, fmt.Sprintf("read request body: %v", err)
	}
	if len(raw) > api.MaxAgentRequestBytes {
		return http.StatusBadRequest, nil, fmt.Sprintf("request body too large: more than %d bytes", api.MaxAgentRequestBytes)
	}
	var req api.AgentRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return http.StatusBadRequest, nil, fmt.Sprintf("bad JSON: %v", err)
	}
	if err := req.Validate(); err != nil {
		return http.StatusBadRequest, nil, err.Error()
	}
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("pod", req.Pod.String())
	permit, err := h.Backend.Permit(r.Context(), &req)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			log.Log(r.Context(), levelRefused, "permit request refused", "status", pe.Status, "reason", pe.Msg)
			return pe.Status, nil, pe.Msg
		}
		log.Error("permit request failed", "err", err, "requested", req.Resources.String())
		return http.StatusInternalServerError, nil, err.Error()
	}
	body, err := json.Marshal(api.PluginResponse{Permit: permit})
	if err != nil {
		return http.StatusInternalServerError, nil, fmt.Sprintf("encode response: %v", err)
	}
	log.Log(r.Context(), levelGranted, "permit granted", "requested", req.Resources.String(), "permit", permit.String())
	return http.StatusOK, body, ""
}

// Serve runs the permit API on addr until ctx ends. ready is closed once it
// listens.
func Serve(ctx context.Context, addr string, h http.Handler, ready chan<- string) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("permit API: listen on %s: %w", addr, err)
	}
	if ready != nil {
		ready <- ln.Addr().String()
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("permit API on %s: %w", addr, err)
	}
	return nil
}
