package guest

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/vmscale/vmscale/neonvm/guestexec"
	"github.com/vmscale/vmscale/neonvm/runner"
	"github.com/vmscale/vmscale/pkg/api"
	"github.com/vmscale/vmscale/pkg/monitor/cgroup"
	"github.com/vmscale/vmscale/pkg/monitor/filecache"
	"github.com/vmscale/vmscale/pkg/monitor/pressure"
	"github.com/vmscale/vmscale/tests/testbin"
)

const monMiB = 1 << 20

// The vm-monitor in the real guest, reached through the runner's loopback
// forward of port 10301: real cgroup v2 memory.stat of neon-postgres, real
// Postgres. A process allocating memory in neon-postgres brings an
// UpscaleRequest; a downscale below what is in use is denied with the
// spec's reason, one above it approved; effective_cache_size follows.
func TestMonitorInGuest(t *testing.T) {
	pgPort, monPort := testbin.FreePort(t), testbin.FreePort(t)
	p := startRunner(t, testSpec(), "-forward", fmt.Sprintf("127.0.0.1:%d=5432,127.0.0.1:%d=10301", pgPort, monPort))
	p.waitReady(t, "runner /ready")
	poll(t, bootTimeout, "Postgres in the guest", func() error {
		_, err := p.exec("/usr/lib/postgresql/15/bin/pg_isready -q -h 127.0.0.1")
		return err
	})

	// QEMU accepts on a forwarded port even with nobody listening in the
	// guest: only the protocol handshake says the monitor is there.
	var c *websocket.Conn
	poll(t, time.Minute, "vm-monitor handshake on the forwarded port", func() error {
		conn, resp, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/monitor", monPort), nil)
		if resp != nil {
			resp.Body.Close()
		}
		if err != nil {
			return err
		}
		if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"min":1,"max":1}`+"\n")); err != nil {
			conn.Close()
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := conn.ReadMessage()
		if err != nil || string(data) != `{"version":1}` {
			conn.Close()
			return fmt.Errorf("handshake answer %q, %v", data, err)
		}
		c = conn
		return nil
	})
	defer c.Close()
	mon := &monitorClient{t: t, c: c}
	mon.call(2, api.HealthCheck{}, `{"type":"HealthCheck","id":2}`)
	// The monitor's footprint while it only samples: a 10 s window (guest
	// time, measured in one exec so the test itself adds no load) with the
	// agent connected and nothing else asked of it.
	idle, idleEnd := monitorProcWindow(t, p, 10)
	rss, cpu := idleEnd.since(idle)
	t.Logf("FIGURE guest (TCG): vm-monitor sampling only: RSS %.1f MiB, CPU %.2f%% of a core (user %d, system %d ticks over %.1f s)",
		float64(rss)/monMiB, cpu, idleEnd.user-idle.user, idleEnd.system-idle.system, idleEnd.uptime-idle.uptime)
	sample := sampleMonitorProc(t, p) // the monitor's CPU from here to the upscale request

	// At setup the monitor sized the cache for the guest's MemTotal: on
	// stock Postgres that is effective_cache_size.
	memTotal := guestMemTotal(t, p)
	cache := filecache.DefaultConfig()
	pg := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=postgres sslmode=disable", pgPort)
	waitCacheSize(t, pg, cache.Size(memTotal))

	// What neon-postgres uses now, from its real cgroup v2 memory.stat.
	base := neonPostgresAnon(t, p)
	t.Logf("guest MemTotal %d MiB; neon-postgres anonymous memory %d MiB", memTotal/monMiB, base/monMiB)

	// A downscale leaving the threshold 150 MiB above use is approved.
	usable := (base + 150*monMiB) * 100 / 85
	target := api.Allocation{Cpu: 1, Mem: usable + 100*monMiB}
	mon.send(4, api.DownscaleRequest{Target: target})
	got := mon.readSkippingUpscales()
	want := fmt.Sprintf(`{"type":"DownscaleResult","Ok":true,"Status":"set file cache size to %d MiB; set cgroup memory threshold to %s","id":4}`,
		cache.Size(usable)/monMiB, pressure.FormatBytes(pressure.Threshold(usable)))
	if got != want {
		t.Fatalf("downscale above use:\n got %s\nwant %s", got, want)
	}
	waitCacheSize(t, pg, max(cache.Size(usable), 8<<10)) // effective_cache_size is at least one page

	// The hog: 200 MiB of anonymous memory held by dd in neon-postgres.
	if _, err := p.exec(`setsid sh -c 'echo $$ >/sys/fs/cgroup/neon-postgres/cgroup.procs && dd if=/dev/zero bs=200M count=1 2>/dev/null | sleep 600' >/dev/null 2>&1 </dev/null &`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	_, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("no UpscaleRequest with a memory hog in neon-postgres: %v (memory.stat now %d MiB anon)", err, neonPostgresAnon(t, p)/monMiB)
	}
	env, err := api.DecodeFromMonitor(data)
	if err != nil || env.Message.MessageType() != api.TypeUpscaleRequest || env.ID%2 != 1 {
		t.Fatalf("first unsolicited frame %s (%v), want an UpscaleRequest with an odd id", data, err)
	}
	t.Logf("FIGURE guest: hog started → UpscaleRequest received: %s", time.Since(start).Round(time.Millisecond))
	// The monitor's own measure: first sample at the threshold → request
	// written to the socket.
	poll(t, 30*time.Second, "the monitor's upscale request latency", func() error {
		out, err := p.exec("/neonvm/bin/busybox wget -qO- http://127.0.0.1:9101/metrics")
		if err != nil {
			return err
		}
		var sum, count string
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "vmscale_monitor_upscale_request_latency_seconds_sum "); ok {
				sum = v
			}
			if v, ok := strings.CutPrefix(line, "vmscale_monitor_upscale_request_latency_seconds_count "); ok {
				count = v
			}
		}
		if count != "1" {
			return fmt.Errorf("latency histogram count %q, want 1", count)
		}
		t.Logf("FIGURE guest: threshold crossed (first sample at it) → UpscaleRequest on the socket: %s s (the monitor's histogram)", sum)
		return nil
	})
	rss, cpu = sampleMonitorProc(t, p).since(sample)
	t.Logf("FIGURE guest (TCG): vm-monitor during the downscale, the hog and the request: RSS %.1f MiB, CPU %.2f%% of a core", float64(rss)/monMiB, cpu)

	// The same downscale is now below what is in use: denied, with the reason.
	mon.send(6, api.DownscaleRequest{Target: target})
	got = mon.readSkippingUpscales()
	if !strings.HasPrefix(got, `{"type":"DownscaleResult","Ok":false,"Status":"calculated memory threshold too low: `) || !strings.HasSuffix(got, `"id":6}`) {
		t.Errorf("downscale below use: %s", got)
	}

	// The agent grants 1 GiB: the cache grows to match.
	mon.send(8, api.UpscaleNotification{Granted: api.Allocation{Cpu: 1, Mem: 1<<30 + 100*monMiB}})
	if got := mon.readSkippingUpscales(); got != `{"type":"UpscaleConfirmation","id":8}` {
		t.Errorf("upscale: %s", got)
	}
	waitCacheSize(t, pg, 698*monMiB)
}

type monitorClient struct {
	t *testing.T
	c *websocket.Conn
}

func (m *monitorClient) send(id uint64, msg api.Message) {
	m.t.Helper()
	data, err := api.EncodeToMonitor(id, msg)
	if err != nil {
		m.t.Fatal(err)
	}
	if err := m.c.WriteMessage(websocket.TextMessage, append(data, '\n')); err != nil {
		m.t.Fatal(err)
	}
}

// readSkippingUpscales reads the next reply, past any UpscaleRequests
// (sent once a second while the pressure lasts).
func (m *monitorClient) readSkippingUpscales() string {
	m.t.Helper()
	for {
		_ = m.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, data, err := m.c.ReadMessage()
		if err != nil {
			m.t.Fatalf("read from the monitor: %v", err)
		}
		if !strings.Contains(string(data), `"type":"UpscaleRequest"`) {
			return string(data)
		}
	}
}

func (m *monitorClient) call(id uint64, msg api.Message, want string) {
	m.t.Helper()
	m.send(id, msg)
	if got := m.readSkippingUpscales(); got != want {
		m.t.Fatalf("got %s, want %s", got, want)
	}
}

func guestMemTotal(t *testing.T, p *runnerProc) uint64 {
	t.Helper()
	out, err := p.exec("grep MemTotal /proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	kb, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatalf("MemTotal line %q", out)
	}
	return kb * 1024
}

// neonPostgresAnon reads neon-postgres's memory.stat in the guest with the
// monitor's own parser.
func neonPostgresAnon(t *testing.T, p *runnerProc) uint64 {
	t.Helper()
	out, err := p.exec("cat /sys/fs/cgroup/neon-postgres/memory.stat")
	if err != nil {
		t.Fatal(err)
	}
	m, err := cgroup.ParseMemoryStat([]byte(out))
	if err != nil {
		t.Fatalf("the guest's real memory.stat does not parse: %v\n%s", err, out)
	}
	return m.NonReclaimable()
}

// waitCacheSize polls effective_cache_size through the forwarded port.
func waitCacheSize(t *testing.T, connstr string, want uint64) {
	t.Helper()
	poll(t, 30*time.Second, fmt.Sprintf("effective_cache_size = %d bytes", want), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, connstr)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var got uint64
		if err := conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting('effective_cache_size'))").Scan(&got); err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("effective_cache_size is %d bytes", got)
		}
		return nil
	})
}

// monitorProc is the monitor's CPU time and RSS and the guest's uptime.
type monitorProc struct {
	uptime       float64 // s
	user, system int64   // clock ticks
	rss          uint64
}

// monitorProcScript prints the guest's uptime and vm-monitor's stat and
// VmRSS lines.
const monitorProcScript = `pid=$(/neonvm/bin/busybox pidof vm-monitor); ` +
	`cut -d' ' -f1 /proc/uptime; cut -d')' -f2 /proc/$pid/stat; grep VmRSS /proc/$pid/status`

func sampleMonitorProc(t *testing.T, p *runnerProc) monitorProc {
	t.Helper()
	out, err := p.exec(monitorProcScript)
	if err != nil {
		t.Fatal(err)
	}
	return parseMonitorProc(t, out)
}

// monitorProcWindow samples, waits seconds in the guest, and samples again, all in
// one command.
func monitorProcWindow(t *testing.T, p *runnerProc, seconds int) (monitorProc, monitorProc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second+time.Minute)
	defer cancel()
	r, err := guestexec.Exec(ctx, filepath.Join(p.run, runner.ExecSocket),
		fmt.Sprintf("%s; echo ---; sleep %d; %s", monitorProcScript, seconds, monitorProcScript))
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("measure the monitor in the guest: %v %+v", err, r)
	}
	out := r.Output
	a, b, ok := strings.Cut(out, "---")
	if !ok {
		t.Fatalf("window output %q", out)
	}
	return parseMonitorProc(t, a), parseMonitorProc(t, b)
}

func parseMonitorProc(t *testing.T, out string) monitorProc {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 {
		t.Fatalf("cannot read vm-monitor's /proc entries: %q", out)
	}
	var s monitorProc
	s.uptime, _ = strconv.ParseFloat(strings.TrimSpace(lines[0]), 64)
	f := strings.Fields(lines[1])
	s.user, _ = strconv.ParseInt(f[11], 10, 64)
	s.system, _ = strconv.ParseInt(f[12], 10, 64)
	kb, _ := strconv.ParseUint(strings.Fields(lines[2])[1], 10, 64)
	s.rss = kb * 1024
	return s
}

// since is the RSS now and the CPU share between two samples (in % of a
// core, guest time).
func (s monitorProc) since(before monitorProc) (uint64, float64) {
	elapsed := s.uptime - before.uptime
	if elapsed <= 0 {
		return s.rss, 0
	}
	return s.rss, float64(s.user+s.system-before.user-before.system) / 100 / elapsed * 100
}
