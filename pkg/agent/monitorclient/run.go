package monitorclient

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/vmscale/vmscale/pkg/agent/wakegrid"
)

// Config times the connection (docs/protocols.md#agent-config, "monitor").
type Config struct {
	ConnectTimeout time.Duration // 4 s
	RetryMinWait   time.Duration // 5 s between connection attempts
	// HealthCheckEvery is also each check's time to be answered.
	HealthCheckEvery    time.Duration // 5 s
	MaxHealthCheckFails time.Duration // 30 s of failing health checks: reconnect
	// Grid, if set, puts health checks on multiples of it (wall clock), so
	// many VMs' checks share one wake-up of the runtime (package wakegrid).
	Grid time.Duration
}

// DefaultConfig is Neon's timing (docs/protocols.md#agent-config).
func DefaultConfig() Config {
	return Config{ConnectTimeout: 4 * time.Second, RetryMinWait: 5 * time.Second, HealthCheckEvery: 5 * time.Second,
		MaxHealthCheckFails: 30 * time.Second}
}

// Events is told about the connection's life.
type Events interface {
	// Connected hands over a new connection; it stays valid until
	// Disconnected.
	Connected(c *Conn)
	Disconnected(err error)
	// UpscaleRequested is the monitor asking for more memory.
	UpscaleRequested()
}

// Run keeps a connection to url until ctx ends: connect (attempts at least
// RetryMinWait apart), health-check every HealthCheckEvery, and drop and
// reconnect a connection that ends or whose health checks have failed for
// MaxHealthCheckFails.
func Run(ctx context.Context, url string, cfg Config, clk clock.WithTicker, log *slog.Logger, ev Events) {
	for {
		attempt := clk.Now()
		dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		conn, err := Dial(dctx, url, log, ev.UpscaleRequested)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Info("cannot connect to the vm-monitor; retrying", "url", url, "err", err, "retryIn", cfg.RetryMinWait)
		} else {
			log.Info("connected to the vm-monitor", "url", url)
			ev.Connected(conn)
			err := supervise(ctx, conn, cfg, clk, log)
			conn.Close()
			ev.Disconnected(err)
			if ctx.Err() != nil {
				return
			}
			log.Info("vm-monitor connection ended; reconnecting", "err", err)
		}
		wait := cfg.RetryMinWait - clk.Since(attempt)
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-clk.After(wait):
			}
		}
	}
}

// supervise health-checks conn until it ends, fails for too long, or ctx
// ends; it returns why. Each check has until the next to be answered.
func supervise(ctx context.Context, conn *Conn, cfg Config, clk clock.WithTicker, log *slog.Logger) error {
	grid := cfg.Grid
	if grid <= 0 {
		grid = time.Nanosecond
	}
	now := clk.Now()
	next := wakegrid.On(now.Add(cfg.HealthCheckEvery), grid)
	t := clk.NewTimer(next.Sub(now))
	defer t.Stop()
	var failingSince time.Time
	sent := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-conn.Done():
			return conn.Err()
		case <-t.C():
		}
		now := clk.Now()
		next = wakegrid.Next(next, now, cfg.HealthCheckEvery, grid)
		t.Reset(next.Sub(now))
		if sent && !conn.ProbeAnswered() {
			if failingSince.IsZero() {
				failingSince = now
			}
			log.Warn("vm-monitor did not answer a health check", "failingFor", now.Sub(failingSince))
			if now.Sub(failingSince) >= cfg.MaxHealthCheckFails {
				return fmt.Errorf("no health check answered for %s", now.Sub(failingSince).Round(time.Millisecond))
			}
		} else if sent {
			failingSince = time.Time{}
		}
		if err := conn.SendProbe(); err != nil {
			return err
		}
		sent = true
	}
}
