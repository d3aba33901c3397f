// Package runnerapi is the contract between the NeonVM controller and
// neonvm-runner, kept in one place so neither side imports the other: how
// the controller hands the VM's spec and status to the runner (the -vmspec
// and -vmstatus encoding, the environment of the runner container), the
// runner HTTP API's paths and bodies, and a typed client of that API.
//
// The dependency direction is controller → runnerapi ← runner; this
// package imports neither.
package runnerapi
