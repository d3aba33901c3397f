package postgres

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vmscale/vmscale/tests/testbin"
)

// pgServer is a throwaway PostgreSQL server on a loopback port, run as the
// postgres user (initdb refuses root) in a folder of its own.
type pgServer struct {
	bin, dir, data string
	port           int
	asUser         []string // runuser prefix when the test runs as root
}

// pgBinaries finds Debian's PostgreSQL server binaries, installing them
// with hack/postgres.sh when they are missing.
func pgBinaries(t *testing.T) string {
	t.Helper()
	find := func() string {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
		sort.Strings(dirs)
		if len(dirs) == 0 {
			return ""
		}
		return filepath.Dir(dirs[len(dirs)-1])
	}
	if bin := find(); bin != "" {
		return bin
	}
	t.Log("PostgreSQL is not installed: installing it with hack/postgres.sh")
	out, err := exec.Command("../../../../hack/postgres.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("hack/postgres.sh: %v\n%s", err, out)
	}
	bin := find()
	if bin == "" {
		t.Fatalf("hack/postgres.sh ran but there is still no initdb:\n%s", out)
	}
	return bin
}

// startPostgres initialises and starts a server; extraConf lines go into
// postgresql.conf. The server is stopped and its folder removed at cleanup.
func startPostgres(t *testing.T, extraConf ...string) *pgServer {
	t.Helper()
	s := &pgServer{bin: pgBinaries(t)}
	dir, err := os.MkdirTemp("", "vmscale-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s.dir, s.data = dir, filepath.Join(dir, "data")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user (from the postgresql package): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		s.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	s.run(t, "initdb", "--no-sync", "--auth=trust", "-U", "postgres", "-D", s.data)
	conf := append([]string{"listen_addresses = '127.0.0.1'", "unix_socket_directories = '" + dir + "'", "fsync = off"}, extraConf...)
	f, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(strings.Join(conf, "\n") + "\n")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	s.port = testbin.FreePort(t)
	s.pgctl(t, "start")
	t.Cleanup(func() { s.run(t, "pg_ctl", "-D", s.data, "-m", "immediate", "-w", "stop") })
	return s
}

func (s *pgServer) run(t *testing.T, prog string, args ...string) {
	t.Helper()
	argv := append(append(append([]string{}, s.asUser...), filepath.Join(s.bin, prog)), args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		t.Fatalf("%s %v: %v\n%s\nserver log:\n%s", prog, args, err, out, log)
	}
}

// pgctl runs pg_ctl start, stop or restart and waits for it.
func (s *pgServer) pgctl(t *testing.T, action string) {
	t.Helper()
	args := []string{"-D", s.data, "-w", "-t", "60", "-l", filepath.Join(s.dir, "server.log")}
	if action != "stop" {
		args = append(args, "-o", fmt.Sprintf("-p %d", s.port))
	} else {
		args = append(args, "-m", "fast")
	}
	s.run(t, "pg_ctl", append(args, action)...)
}

// connstr is like the one compute_ctl gives the monitor.
func (s *pgServer) connstr() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=postgres sslmode=disable application_name=vm-monitor", s.port)
}

// setting reads a setting's value in bytes on a fresh connection, as
// another backend sees it after the reload.
func (s *pgServer) setting(ctx context.Context, name string) (int64, error) {
	conn, err := pgx.Connect(ctx, s.connstr())
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var v int64
	err = conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting($1))", name).Scan(&v)
	return v, err
}
