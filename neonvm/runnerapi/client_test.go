package runnerapi_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/runner"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

// The client against the runner's own handler: what the controller sends
// is what the runner takes, and back.
func TestClientAgainstRunner(t *testing.T) {
	ctx := context.Background()
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 250, Max: 2000, Use: 250}}}
	srv := httptest.NewServer(runner.NewAPI(spec, vmv1.CPUScalingModeQMP, nil, "").Handler())
	defer srv.Close()
	c := runnerapi.NewClient(srv.URL, nil)

	if err := c.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if got, err := c.CPUCurrent(ctx); err != nil || got != 250 {
		t.Fatalf("CPUCurrent = %s, %v; want the minimum, 250m", got, err)
	}
	if err := c.ChangeCPU(ctx, 1500); err != nil {
		t.Fatalf("ChangeCPU 1500m: %v", err)
	}
	if got, err := c.CPUCurrent(ctx); err != nil || got != 1500 {
		t.Fatalf("CPUCurrent after the change = %s, %v; want 1500m", got, err)
	}
	err := c.ChangeCPU(ctx, 3000)
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "outside spec.guest.cpus") {
		t.Fatalf("ChangeCPU above the maximum = %v; want the runner's 400", err)
	}
}

func TestClientReadyNotReady(t *testing.T) {
	spec := &vmv1.VirtualMachineSpec{Guest: vmv1.Guest{CPUs: vmv1.CPUs{Min: 1000, Max: 1000, Use: 1000}}}
	notRunning := func(context.Context) error { return errors.New("guest is paused") }
	srv := httptest.NewServer(runner.NewAPI(spec, vmv1.CPUScalingModeQMP, notRunning, "").Handler())
	defer srv.Close()
	err := runnerapi.NewClient(srv.URL, nil).Ready(context.Background())
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "guest is paused") {
		t.Fatalf("Ready = %v; want the runner's 503 with its reason", err)
	}
}

// The wire format is NeonVM's: the exact bytes, method, path and content
// type, so a NeonVM runner and controller interoperate with vmscale's.
func TestClientWireFormat(t *testing.T) {
	var method, path, ctype, body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		method, path, ctype, body = r.Method, r.URL.Path, r.Header.Get("Content-Type"), string(b)
		if r.URL.Path == "/cpu_current" {
			io.WriteString(w, `{"VCPUs":"750m"}`)
		}
	}))
	defer srv.Close()
	c := runnerapi.NewClient(srv.URL, srv.Client())
	ctx := context.Background()

	if err := c.ChangeCPU(ctx, 1500); err != nil {
		t.Fatal(err)
	}
	if method != "POST" || path != "/cpu_change" || ctype != "application/json" || body != `{"VCPUs":"1500m"}` {
		t.Errorf("ChangeCPU sent %s %s (%s) %s", method, path, ctype, body)
	}
	if err := c.ChangeCPU(ctx, 2000); err != nil || body != `{"VCPUs":2}` {
		t.Errorf("ChangeCPU of whole CPUs sent %s (%v); want {\"VCPUs\":2}", body, err)
	}
	got, err := c.CPUCurrent(ctx)
	if err != nil || got != 750 || method != "GET" || path != "/cpu_current" {
		t.Errorf("CPUCurrent = %s, %v (%s %s); want 750m from GET /cpu_current", got, err, method, path)
	}
}

func TestClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cpu_current" {
			io.WriteString(w, "not json")
			return
		}
		http.Error(w, "neonvm-daemon PUT /cpu: timeout", http.StatusGatewayTimeout)
	}))
	ctx := context.Background()
	c := runnerapi.NewClient(srv.URL, nil)
	if _, err := c.CPUCurrent(ctx); err == nil || !strings.Contains(err.Error(), `answered "not json"`) {
		t.Errorf("CPUCurrent on a bad body = %v", err)
	}
	if err := c.ChangeCPU(ctx, 1000); err == nil || !strings.Contains(err.Error(), "504") {
		t.Errorf("ChangeCPU on a 504 = %v", err)
	}
	srv.Close()
	// A runner that is gone: the transport's error, wrapped.
	_, err := c.CPUCurrent(ctx)
	var uerr interface{ Timeout() bool }
	if err == nil || !errors.As(err, &uerr) {
		t.Errorf("CPUCurrent with the runner gone = %v; want the wrapped *url.Error", err)
	}
}
