package guest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/neonvm/runner"
	"github.com/vmscale/vmscale/neonvm/runnerapi"
	"github.com/vmscale/vmscale/tests/testbin"
)

// The runner pod's guest network, with the runner in a network namespace of
// its own standing in for the pod's: the guest gets its address by DHCP on
// the tap, its ports answer on the "pod IP" with the client's own address
// preserved, and its outbound traffic leaves masqueraded behind the pod IP.
func TestRunnerPodNetwork(t *testing.T) {
	id := rand.IntN(200) + 20
	ns := fmt.Sprintf("vmscale-podnet%d", id)
	hostIf := fmt.Sprintf("vpn%d", id)
	hostIP, podIP := fmt.Sprintf("10.251.%d.1", id), fmt.Sprintf("10.251.%d.2", id)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
	sh("ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	sh("ip", "addr", "add", hostIP+"/30", "dev", hostIf)
	sh("ip", "link", "set", hostIf, "up")
	sh("ip", "netns", "exec", ns, "ip", "addr", "add", podIP+"/30", "dev", "eth0")
	sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
	sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", hostIP)

	// Something on the "outside" for the guest to reach.
	l, err := net.Listen("tcp", hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.RemoteAddr
		fmt.Fprint(w, "hello guest")
	})}
	go srv.Serve(l)
	defer srv.Close()

	spec := testSpec()
	spec.Disks = nil
	spec.Guest.Ports = []vmv1.Port{{Name: "postgres", Port: 5432}}
	spec.QMP, spec.QMPManual = int32(testbin.FreePort(t)), int32(testbin.FreePort(t))
	enc, err := runnerapi.EncodeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	img, dir := guestImage(t), t.TempDir()
	runDir := filepath.Join(dir, "run")
	out := &syncBuf{}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, buildRunner(t),
		"-vmspec", enc, "-accel", "tcg", "-pod-network", "-qmp-host", "127.0.0.1",
		"-kernelpath", filepath.Join(img, "vmlinux"), "-initrd", filepath.Join(img, "initrd.img"),
		"-rootdisk", filepath.Join(img, "disk.qcow2"), "-images-dir", filepath.Join(dir, "images"),
		"-run-dir", runDir, "-http-addr", ":25183")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("runner output:\n%s", out.String())
		}
	})

	client := http.Client{Timeout: 5 * time.Second}
	poll(t, bootTimeout, "runner /ready on the pod IP", func() error {
		resp, err := client.Get("http://" + podIP + ":25183/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
	poll(t, bootTimeout, "Postgres on the pod IP", func() error {
		return exec.Command("pg_isready", "-q", "-h", podIP, "-p", "5432").Run()
	})
	addr, err := exec.Command("psql", "-h", podIP, "-U", "postgres", "-Atc", "select inet_client_addr()").CombinedOutput()
	if err != nil || strings.TrimSpace(string(addr)) != hostIP {
		t.Errorf("the guest saw the client as %q (%v); want its own address %s", addr, err, hostIP)
	}
	resp, err := client.Get("http://" + podIP + ":9100/metrics")
	if err != nil {
		t.Fatalf("metrics on the pod IP: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "host_memory_total_bytes") {
		t.Errorf("metrics on the pod IP: %s", body)
	}

	// Egress from the guest, masqueraded behind the pod IP.
	r, err := execIn(runDir, fmt.Sprintf("/neonvm/bin/busybox wget -q -O- http://%s/", l.Addr()))
	if err != nil || !strings.Contains(r, "hello guest") {
		t.Fatalf("guest egress: %q %v", r, err)
	}
	select {
	case from := <-seen:
		if host, _, _ := net.SplitHostPort(from); host != podIP {
			t.Errorf("the outside saw the guest as %s; want the pod IP %s", host, podIP)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the outside server saw no request")
	}
	ip, err := execIn(runDir, "/neonvm/bin/busybox ip -4 addr show eth0")
	if err != nil || !strings.Contains(ip, runner.PodNetGuestIP+"/30") {
		t.Errorf("guest address by DHCP: %q %v", ip, err)
	}
}

func execIn(runDir, command string) (string, error) {
	return (&runnerProc{run: runDir}).exec(command)
}
