// Package postgres applies the vm-monitor's cache size to a running
// Postgres over one persistent connection (pgx). On Neon's Postgres the
// setting is its local file cache (neon.file_cache_size_limit); on stock
// Postgres, which has none, it is effective_cache_size, so the planner
// knows the memory the VM really has.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vmscale/vmscale/pkg/monitor/filecache"
)

// Setting is the Postgres setting that carries the cache size.
type Setting int

const (
	// Unknown: not connected yet.
	Unknown Setting = iota
	// NeonFileCache is neon.file_cache_size_limit, capped by
	// neon.max_file_cache_size (Neon's Postgres).
	NeonFileCache
	// EffectiveCacheSize is effective_cache_size (stock Postgres).
	EffectiveCacheSize
)

// String is the setting's name in Postgres.
func (s Setting) String() string {
	switch s {
	case NeonFileCache:
		return "neon.file_cache_size_limit"
	case EffectiveCacheSize:
		return "effective_cache_size"
	}
	return "unknown"
}

// Postgres applies cache sizes to one Postgres over one persistent
// connection. A failed statement closes the connection, reconnects and
// retries once, so a restarted server costs one slow call, not an error.
// Which setting it sizes is decided at each connect: Neon's file cache when
// neon.max_file_cache_size exists, else effective_cache_size.
type Postgres struct {
	config *pgx.ConnConfig
	log    *slog.Logger

	mu      sync.Mutex
	conn    *pgx.Conn
	setting Setting
	maxSize uint64 // neon.max_file_cache_size, with NeonFileCache
}

// New checks the connection string; it connects on first use (the
// server may not be up yet when the monitor starts).
func New(connstr string, log *slog.Logger) (*Postgres, error) {
	cfg, err := pgx.ParseConfig(connstr)
	if err != nil {
		return nil, fmt.Errorf("parse the postgres connection string: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 3 * time.Second
	}
	return &Postgres{config: cfg, log: log}, nil
}

// Setting is the setting sized on the current connection (Unknown before
// the first connect).
func (p *Postgres) Setting() Setting {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setting
}

// Size reads the size now in effect, in bytes.
func (p *Postgres) Size(ctx context.Context) (uint64, error) {
	var size int64
	err := p.do(ctx, "read the cache size", func(ctx context.Context) error {
		return p.conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting($1))", p.setting.String()).Scan(&size)
	})
	if err != nil {
		return 0, err
	}
	if size < 0 {
		return 0, fmt.Errorf("read the cache size: %s is negative (%d)", p.setting, size)
	}
	return uint64(size), nil
}

// SetSize asks for a cache of bytes (whole MiB; the rest is dropped) and
// returns the size applied: with Neon's file cache, at most its maximum.
// The change is written with ALTER SYSTEM and takes effect on the reload
// it triggers.
func (p *Postgres) SetSize(ctx context.Context, bytes uint64) (uint64, error) {
	var applied uint64
	err := p.do(ctx, "set the cache size", func(ctx context.Context) error {
		applied = bytes / filecache.MiB * filecache.MiB
		value := fmt.Sprintf("%dMB", applied/filecache.MiB)
		if p.setting == NeonFileCache {
			applied = min(applied, p.maxSize/filecache.MiB*filecache.MiB)
			value = fmt.Sprintf("%dMB", applied/filecache.MiB)
		} else if applied == 0 {
			// effective_cache_size is at least one 8 kB page.
			applied, value = 8<<10, "8kB"
		}
		// ALTER SYSTEM takes no parameters; value is digits and a unit.
		if _, err := p.conn.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", p.setting, value)); err != nil {
			return fmt.Errorf("ALTER SYSTEM SET %s: %w", p.setting, err)
		}
		if _, err := p.conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			return fmt.Errorf("reload the configuration: %w", err)
		}
		return nil
	})
	return applied, err
}

// Close drops the connection.
func (p *Postgres) Close(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop(ctx)
}

// do runs op on the connection, connecting first if needed; on failure it
// reconnects and runs op once more.
func (p *Postgres) do(ctx context.Context, what string, op func(context.Context) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil {
		if err := p.connect(ctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	err := op(ctx)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		p.drop(ctx) // the statement may be half-way; start clean next time
		return fmt.Errorf("%s: %w", what, err)
	}
	p.log.Warn("postgres statement failed; reconnecting and retrying once", "what", what, "err", err)
	p.drop(ctx)
	if cerr := p.connect(ctx); cerr != nil {
		return fmt.Errorf("%s: %w (reconnect: %w)", what, err, cerr)
	}
	if err := op(ctx); err != nil {
		return fmt.Errorf("%s after reconnecting: %w", what, err)
	}
	return nil
}

func (p *Postgres) drop(ctx context.Context) {
	if p.conn == nil {
		return
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = p.conn.Close(closeCtx)
	p.conn = nil
}

// connect opens the connection and decides which setting to size.
func (p *Postgres) connect(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, p.config)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	setting, maxSize, err := detect(ctx, conn)
	if err != nil {
		_ = conn.Close(ctx)
		return err
	}
	if setting != p.setting {
		p.log.Info("sizing the postgres cache", "setting", setting.String(), "maxBytes", maxSize)
	}
	p.conn, p.setting, p.maxSize = conn, setting, maxSize
	return nil
}

// detect picks the setting: Neon's file cache when its maximum is defined.
func detect(ctx context.Context, conn *pgx.Conn) (Setting, uint64, error) {
	var max *string
	if err := conn.QueryRow(ctx, "SELECT current_setting('neon.max_file_cache_size', true)").Scan(&max); err != nil {
		return Unknown, 0, fmt.Errorf("look for neon.max_file_cache_size: %w", err)
	}
	if max == nil || *max == "" {
		return EffectiveCacheSize, 0, nil
	}
	var bytes int64
	if err := conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting('neon.max_file_cache_size'))").Scan(&bytes); err != nil {
		return Unknown, 0, fmt.Errorf("read neon.max_file_cache_size: %w", err)
	}
	if bytes < 0 {
		return Unknown, 0, errors.New("neon.max_file_cache_size is negative")
	}
	return NeonFileCache, uint64(bytes), nil
}
