package postgres

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/monitor/filecache"
	"github.com/vmscale/vmscale/tests/poll"
)

const MiB = filecache.MiB

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitSetting polls until another backend sees name = want bytes (the
// reload is asynchronous).
func waitSetting(t *testing.T, s *pgServer, name string, want uint64) {
	t.Helper()
	poll.Until(t, 10*time.Second, 20*time.Millisecond, fmt.Sprintf("%s = %d MiB", name, want/MiB), func() error {
		got, err := s.setting(t.Context(), name)
		if err != nil {
			return err
		}
		if uint64(got) != want {
			return fmt.Errorf("%s is %d MiB", name, got/MiB)
		}
		return nil
	})
}

// Stock Postgres has no file cache: the monitor sizes effective_cache_size,
// through upscale and downscale, and across a server restart.
func TestEffectiveCacheSizeOnStockPostgres(t *testing.T) {
	s := startPostgres(t)
	ctx := t.Context()
	before, err := s.setting(ctx, "effective_cache_size")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(s.connstr(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	c := filecache.DefaultConfig()

	start := time.Now()
	applied, err := p.SetSize(ctx, c.Size(1<<30)) // a 1 GiB VM
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first SetSize (connect, detect, ALTER SYSTEM, reload): %s", time.Since(start))
	if p.Setting() != EffectiveCacheSize || applied != 698*MiB {
		t.Fatalf("sized %s to %d MiB, want effective_cache_size to 698 MiB", p.Setting(), applied/MiB)
	}
	if before == 698*MiB {
		t.Fatal("the default already equals the target: the test would prove nothing")
	}
	waitSetting(t, s, "effective_cache_size", 698*MiB)
	if got, err := p.Size(ctx); err != nil || got != 698*MiB {
		t.Errorf("Size = %d MiB, %v", got/MiB, err)
	}

	// Upscale to 4 GiB, then downscale to 512 MiB.
	for _, total := range []uint64{4 << 30, 512 << 20} {
		start := time.Now()
		if _, err := p.SetSize(ctx, c.Size(total)); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetSize on an open connection: %s", time.Since(start))
		waitSetting(t, s, "effective_cache_size", c.Size(total))
	}

	// A restart breaks the connection: the next call reconnects and retries.
	pid := p.conn.PgConn().PID()
	s.pgctl(t, "restart")
	waitSetting(t, s, "effective_cache_size", 232*MiB) // ALTER SYSTEM persisted
	if _, err := p.SetSize(ctx, c.Size(2<<30)); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	if p.conn.PgConn().PID() == pid {
		t.Error("still on the old backend after a restart")
	}
	waitSetting(t, s, "effective_cache_size", 1536*MiB)

	// Server down: an error, not a hang or a panic; back up: it works again.
	s.pgctl(t, "stop")
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := p.SetSize(dctx, c.Size(1<<30)); err == nil {
		t.Error("SetSize succeeded with the server down")
	}
	cancel()
	s.pgctl(t, "start")
	if _, err := p.SetSize(ctx, c.Size(1<<30)); err != nil {
		t.Fatalf("after the server came back: %v", err)
	}
	waitSetting(t, s, "effective_cache_size", 698*MiB)
}

// With Neon's settings present (here as custom placeholders), the monitor
// sizes neon.file_cache_size_limit instead, capped by
// neon.max_file_cache_size, and leaves effective_cache_size alone.
func TestNeonFileCacheSettings(t *testing.T) {
	s := startPostgres(t, "neon.max_file_cache_size = '1GB'", "neon.file_cache_size_limit = '0MB'")
	ctx := t.Context()
	ecs, err := s.setting(ctx, "effective_cache_size")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(s.connstr(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if got, err := p.Size(ctx); err != nil || got != 0 {
		t.Fatalf("initial size %d, %v", got, err)
	}
	if p.Setting() != NeonFileCache {
		t.Fatalf("sizing %s with neon.max_file_cache_size defined", p.Setting())
	}
	c := filecache.DefaultConfig()
	applied, err := p.SetSize(ctx, c.Size(4<<30)) // 3072 MiB, capped at 1 GiB
	if err != nil || applied != 1024*MiB {
		t.Fatalf("applied %d MiB, %v; want the 1024 MiB cap", applied/MiB, err)
	}
	waitSetting(t, s, "neon.file_cache_size_limit", 1024*MiB)
	if _, err := p.SetSize(ctx, c.Size(1<<30)); err != nil {
		t.Fatal(err)
	}
	waitSetting(t, s, "neon.file_cache_size_limit", 698*MiB)
	if got, err := s.setting(ctx, "effective_cache_size"); err != nil || got != ecs {
		t.Errorf("effective_cache_size changed to %d (%v) though Neon's cache is sized", got, err)
	}
}

func TestBadConnectionString(t *testing.T) {
	if _, err := New("host=127.0.0.1 port=notaport", quietLog()); err == nil {
		t.Error("accepted a bad connection string")
	}
}
