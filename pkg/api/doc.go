// Package api holds the wire types vmscale's components exchange with each
// other and with Neon's: the autoscaler-agent's requests to the scheduler
// plugin and the agent↔vm-monitor websocket messages. Every type here
// encodes exactly as Neon's does; testdata/compat/vectors holds the proof.
package api
