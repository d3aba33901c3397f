// Package api holds the wire types vmscale's components exchange with each
// other and with Neon's: the autoscaler-agent's requests to the scheduler
// plugin and the agent↔vm-monitor websocket messages; the label and
// annotation keys they exchange on VirtualMachines and pods (keys.go); and
// the scaling config the agent's config file, a VM's override annotation and
// the agent's state machine share (scaling.go). Every type here encodes
// exactly as Neon's does; testdata/compat/vectors holds the proof.
package api
