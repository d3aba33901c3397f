package cluster

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// extraNetVM creates a VM with the extra network in ns and waits until the
// host reaches its Postgres on the extra-network address (the host's
// vmscale-ovl is on the overlay, hack/local-cluster/cluster.sh).
func extraNetVM(t testing.TB, ns, name string) (vmStatus, string) {
	t.Helper()
	apply(t, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: %s
spec:
  restartPolicy: Never
  cpuScalingMode: SysfsScaling
  extraNetwork: {enable: true}
  guest:
    cpus: {min: 1, max: 1, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 2, use: 2}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
`, name, Image(t, "vm-postgres")))
	var ip string
	st := waitVM(t, ns, name, 6*time.Minute, "VM Running with an extra-network address", func(s vmStatus) error {
		x, err := getStatus[struct {
			ExtraNetIP string `json:"extraNetIP"`
		}]("neonvm", ns, name)
		if err != nil {
			return err
		}
		ip = x.ExtraNetIP
		if s.Phase != "Running" || ip == "" {
			return fmt.Errorf("phase %q extraNetIP %q", s.Phase, ip)
		}
		return nil
	})
	if net.ParseIP(ip) == nil || !strings.HasPrefix(ip, "10.100.") {
		t.Fatalf("extraNetIP %q: want an address of the local cluster's 10.100.0.0/16", ip)
	}
	poll(t, 2*time.Minute, "Postgres on the extra-network address "+ip, func() error {
		out, err := guestQuery(ip, "select 1")
		if err == nil && out != "1" {
			err = fmt.Errorf("answer %q", out)
		}
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	return st, ip
}

// session is one Postgres connection queried every interval: what a client
// of the extra network sees while its VM moves.
type session struct {
	mu       sync.Mutex
	answers  int
	errs     []error
	pids     map[uint32]bool
	last     time.Time
	maxGap   time.Duration
	maxGapAt time.Time
	stop     context.CancelFunc
	done     chan struct{}
}

// count is the number of answers so far.
func (s *session) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answers
}

// waitAnswers polls until the session has answered n more times than from.
func (s *session) waitAnswers(t testing.TB, from, n int, what string) {
	t.Helper()
	poll(t, time.Minute, what, func() error {
		if got := s.count() - from; got < n {
			return fmt.Errorf("%d of %d answers", got, n)
		}
		return nil
	})
}

func holdSession(t testing.TB, ip string, interval time.Duration) *session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s:5432/postgres?sslmode=disable&connect_timeout=10", ip))
	if err != nil {
		t.Fatalf("connect to %s: %v", ip, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	s := &session{pids: map[uint32]bool{}, last: time.Now(), stop: stop, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for runCtx.Err() == nil {
			// A query may wait out the migration's pause (TCP retransmits);
			// one that takes longer than this is a failure.
			qctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
			var pid uint32
			err := conn.QueryRow(qctx, "select pg_backend_pid()").Scan(&pid)
			cancel()
			now := time.Now()
			s.mu.Lock()
			switch {
			case runCtx.Err() != nil:
			case err != nil:
				s.errs = append(s.errs, fmt.Errorf("%s: %w", now.Format("15:04:05.000"), err))
			default:
				s.answers++
				s.pids[pid] = true
				if gap := now.Sub(s.last); gap > s.maxGap {
					s.maxGap, s.maxGapAt = gap, now
				}
				s.last = now
			}
			s.mu.Unlock()
			if err != nil && conn.IsClosed() {
				return
			}
			select {
			case <-runCtx.Done():
			case <-tick.C:
			}
		}
	}()
	return s
}

// close ends the session; the time since its last answer counts as a gap
// too (a query still waiting at the end is cancelled, not failed).
func (s *session) close() {
	end := time.Now()
	s.stop()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if gap := end.Sub(s.last); gap > s.maxGap {
		s.maxGap, s.maxGapAt = gap, end
	}
}

// migrateWithSession moves the VM to the other node while a session on its
// extra-network address runs a query every 100 ms, and returns the session
// and what QEMU reported.
func migrateWithSession(t testing.TB, ns, vm, migration, ip string) (*session, vmmStatus) {
	t.Helper()
	s := holdSession(t, ip, 100*time.Millisecond)
	s.waitAnswers(t, 0, 20, "a baseline of answers before the move")
	createMigration(t, ns, migration, vm, "")
	m := waitVMM(t, ns, migration, 8*time.Minute, "migration Succeeded", func(st vmmStatus) error {
		if st.Phase == "Failed" {
			t.Fatalf("migration failed: %+v", st.Conditions)
		}
		if st.Phase != "Succeeded" {
			return fmt.Errorf("phase %q", st.Phase)
		}
		return nil
	})
	waitVM(t, ns, vm, time.Minute, "VM Running in the target pod", func(st vmStatus) error {
		if st.Phase != "Running" || st.PodName != m.TargetPodName {
			return fmt.Errorf("phase %q pod %q", st.Phase, st.PodName)
		}
		return nil
	})
	// The source pod goes too; the session must outlive that.
	poll(t, 2*time.Minute, "source pod deleted", func() error {
		if _, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", m.SourcePodName); err == nil {
			return fmt.Errorf("source pod %s still exists", m.SourcePodName)
		}
		return nil
	})
	s.waitAnswers(t, s.count(), 20, "answers after the source pod is gone")
	s.close()
	return s, m
}

// The extra network on the local cluster: a VM with spec.extraNetwork gets
// an address on the overlay that the host reaches (Postgres on
// extraNetIP:5432), and keeps it through a live migration to the other
// node: one Postgres session, queried every 100 ms from the host, sees the
// same backend before and after, no query fails, and the longest pause
// between answers stays close to QEMU's own downtime (the target QEMU
// announces the guest's MAC at once, so the overlay's bridges learn where
// it went). Figures go to $VMSCALE_CACHE/bench/extranet.txt.
func TestExtraNetwork(t *testing.T) {
	kc(t)
	installCRDs(t)
	ns := namespace(t, "extranet")
	// The test's own pool: a fresh cluster has no neonvm-system namespace.
	ctl := startController(t, buildController(t), "--ipam-pool-name="+ns+"/extranet-pool")
	defer func() {
		if t.Failed() {
			t.Logf("controller log (tail):\n%s", tail(ctl.log.String(), 80))
			events, _ := TryKubectl(kubeconfig, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
			t.Logf("events:\n%s", events)
			logs, _ := TryKubectl(kubeconfig, "-n", ns, "logs", "-l", "vm.neon.tech/name=xnet", "--all-containers", "--prefix", "--tail=40")
			t.Logf("runner logs:\n%s", logs)
		}
	}()
	st, ip := extraNetVM(t, ns, "xnet")
	t.Logf("VM %s on %s: extra-network address %s reached from the host", st.PodName, st.Node, ip)
	before := readIdentity(t, ip)

	s, m := migrateWithSession(t, ns, "xnet", "move", ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	line := fmt.Sprintf("extranet_migration %s->%s session_answers=%d session_failures=%d backend_pids=%d longest_gap_ms=%d qemu_downtime_ms=%d qemu_total_ms=%d",
		m.SourceNode, m.TargetNode, s.answers, len(s.errs), len(s.pids), s.maxGap.Milliseconds(), m.Info.DowntimeMs, m.Info.TotalTimeMs)
	appendBenchTo(t, "extranet.txt", line)
	if m.SourceNode == m.TargetNode {
		t.Errorf("migrated from %s to %s: want the other node", m.SourceNode, m.TargetNode)
	}
	if len(s.errs) > 0 {
		t.Errorf("%d queries failed during the move, first: %v", len(s.errs), s.errs[0])
	}
	if len(s.pids) != 1 {
		t.Errorf("backend pids %v: want one session throughout", s.pids)
	}
	// What the network may add to QEMU's pause: the target's announce is
	// immediate, but a segment lost in the pause waits for TCP's
	// retransmission timer (200 ms at least, doubling). Typically 0.5 s;
	// one run on a busy machine took 4 s (three retransmissions: the
	// announce did not reach the host's bridge at once; to investigate).
	// The bound is what a session survives without failing a query, the
	// gap itself is the recorded figure.
	if limit := time.Duration(m.Info.DowntimeMs)*time.Millisecond + 8*time.Second; s.maxGap > limit {
		t.Errorf("longest gap between answers %s (at %s), QEMU downtime %d ms: want at most %s",
			s.maxGap, s.maxGapAt.Format("15:04:05.000"), m.Info.DowntimeMs, limit)
	}
	// Asked on the extra-network address: the pod IP changes with the pod
	// and may be empty while the status is handed over.
	after := readIdentity(t, ip)
	if after.BootID != before.BootID {
		t.Errorf("the guest restarted: before %+v, after %+v", before, after)
	}
	if out, err := guestQuery(ip, "select 1"); err != nil || out != "1" {
		t.Errorf("a new connection to %s after the move: %q %v", ip, out, err)
	}
}

// BenchmarkExtraNetMigrationGap moves a VM between the nodes b.N times
// with a session on its extra-network address, reporting the longest gap
// between the session's answers (queried every 100 ms) and QEMU's downtime.
func BenchmarkExtraNetMigrationGap(b *testing.B) {
	kc(b)
	installCRDs(b)
	ns := namespace(b, "bench-extranet")
	startController(b, buildController(b), "--ipam-pool-name="+ns+"/extranet-pool")
	_, ip := extraNetVM(b, ns, "xnet")
	var gap, down time.Duration
	for i := 0; i < b.N; i++ {
		s, m := migrateWithSession(b, ns, "xnet", fmt.Sprintf("m%d", i), ip)
		if len(s.errs) > 0 || len(s.pids) != 1 {
			b.Fatalf("session broken by the move: %d failures (%v), pids %v", len(s.errs), s.errs, s.pids)
		}
		gap += s.maxGap
		down += time.Duration(m.Info.DowntimeMs) * time.Millisecond
	}
	g, d := gap/time.Duration(b.N), down/time.Duration(b.N)
	b.ReportMetric(float64(g.Milliseconds()), "gap-ms/op")
	b.ReportMetric(float64(d.Milliseconds()), "downtime-ms/op")
	appendBenchTo(b, "extranet.txt", fmt.Sprintf("extranet_migration_bench n=%d longest_gap_ms=%d qemu_downtime_ms=%d", b.N, g.Milliseconds(), d.Milliseconds()))
}
