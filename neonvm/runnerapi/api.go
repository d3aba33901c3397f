package runnerapi

import (
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// The runner HTTP API's paths, on the runner pod's IP at spec.runnerPort
// (vmv1.DefaultRunnerPort). Methods are as NeonVM's runner has them.
const (
	// PathReady (GET) answers 200 "ok" once the guest runs (and, where
	// the runner needs it, neonvm-daemon answers in the guest); 503 with
	// the reason otherwise. The runner pod's readiness probe.
	PathReady = "/ready"
	// PathCPUCurrent (GET) answers the VM's current vCPU amount as a
	// CPUBody.
	PathCPUCurrent = "/cpu_current"
	// PathCPUChange (POST a CPUBody) sets the vCPU amount: 200 when
	// applied, 400 on a malformed body or an amount outside
	// spec.guest.cpus, 502/504 when neonvm-daemon in the guest failed or
	// timed out (SysfsScaling).
	PathCPUChange = "/cpu_change"
)

// CPUBody is the body of /cpu_current and /cpu_change: {"VCPUs":
// <MilliCPU>} (capital key, as NeonVM's controller sends it).
type CPUBody struct {
	VCPUs vmv1.MilliCPU `json:"VCPUs"`
}

// Timeout is the runner API's timeout on both sides: the runner's server
// reads and writes within it, and the controller waits as long, as
// NeonVM's do.
const Timeout = 5 * time.Second
