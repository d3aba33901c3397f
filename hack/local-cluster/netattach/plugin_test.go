package netattach

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The plugin for real, as the container runtime runs it: the binary with
// skel's environment, in a throwaway "node" network namespace holding the
// bridge, attaching throwaway "pod" namespaces; only the apiserver is fake.
func TestPluginAddCheckDel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	bin := filepath.Join(t.TempDir(), "vmscale-netattach")
	build := exec.Command("go", "build", "-o", bin, "./vmscale-netattach")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	prefix := fmt.Sprintf("vna%d", os.Getpid())
	node := makeNetns(t, prefix+"-node")
	podA := makeNetns(t, prefix+"-a")
	podB := makeNetns(t, prefix+"-b")
	podC := makeNetns(t, prefix+"-c")
	ipIn(t, node, "link", "add", "neon-br0", "mtu", "1450", "type", "bridge")
	ipIn(t, node, "link", "set", "neon-br0", "up")

	// The apiserver listens inside the node's namespace, where the plugin
	// runs.
	var l net.Listener
	inNetns(t, node, func() (err error) { l, err = net.Listen("tcp", "127.0.0.1:0"); return err })
	srv := fakeAPIServer(t, l, map[string]string{
		"demo/a":     "neonvm-system/neonvm-overlay-net@net1",
		"demo/b":     `[{"name":"neonvm-overlay-net","namespace":"neonvm-system","interface":"net1"}]`,
		"demo/plain": "",
		"demo/bad":   "neonvm-system/neonvm-overlay-net@net1,other/net@net2",
	})
	conf := fmt.Sprintf(`{"cniVersion":"0.4.0","name":"vmscale","type":"vmscale-netattach",
		"kubeconfig":%q,"networks":{"neonvm-system/neonvm-overlay-net":"neon-br0"},
		"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
		  "ips":[{"version":"4","interface":0,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],
		  "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}`, writeKubeconfig(t, srv.URL))
	run := func(cmd, id, pod, podNetns string) (string, error) {
		c := exec.Command("nsenter", "--net="+node, bin)
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + podNetns, "CNI_IFNAME=eth0",
			"CNI_PATH=" + filepath.Dir(bin), "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=" + pod}
		c.Stdin = strings.NewReader(conf)
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		err := c.Run()
		return out.String(), err
	}

	// ADD: the previous result unchanged, net1 in the pod, the host end on
	// the bridge.
	out, err := run("ADD", "ctr-a", "a", podA)
	if err != nil {
		t.Fatalf("ADD: %v: %s", err, out)
	}
	var got, want map[string]any
	_ = json.Unmarshal([]byte(out), &got)
	_ = json.Unmarshal([]byte(`{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","interface":0,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}`), &want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ADD result %s; want the previous result unchanged", out)
	}
	if mtu := strings.TrimSpace(ipIn(t, podA, "-o", "link", "show", "net1")); !strings.Contains(mtu, "mtu 1450") || !strings.Contains(mtu, "UP") {
		t.Errorf("pod net1: %s", mtu)
	}
	if addrs := ipIn(t, podA, "-o", "-4", "addr", "show", "net1"); strings.TrimSpace(addrs) != "" {
		t.Errorf("pod net1 has an address: %s", addrs)
	}
	host := HostInterface("ctr-a", "net1")
	if l := ipIn(t, node, "-o", "link", "show", host); !strings.Contains(l, "master neon-br0") || !strings.Contains(l, "mtu 1450") {
		t.Errorf("host end: %s", l)
	}
	if out, err := run("CHECK", "ctr-a", "a", podA); err != nil {
		t.Errorf("CHECK: %v: %s", err, out)
	}
	// The annotation's JSON form, a second pod.
	if out, err := run("ADD", "ctr-b", "b", podB); err != nil {
		t.Fatalf("ADD b: %v: %s", err, out)
	}

	// The two pods share an L2 segment: addresses the "guests" own reach
	// each other over it.
	ipIn(t, podA, "addr", "add", "10.100.0.1/16", "dev", "net1")
	ipIn(t, podB, "addr", "add", "10.100.0.2/16", "dev", "net1")
	var ln net.Listener
	inNetns(t, podA, func() (err error) { ln, err = net.Listen("tcp", "10.100.0.1:0"); return err })
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			_, _ = c.Write([]byte("over the overlay"))
			c.Close()
		}
	}()
	inNetns(t, podB, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if string(b) != "over the overlay" {
			return fmt.Errorf("read %q, %v", b, err)
		}
		return nil
	})

	// A pod asking for nothing: passed through, nothing made.
	if out, err := run("ADD", "ctr-c", "plain", podC); err != nil || !strings.Contains(out, "10.244.1.7/24") {
		t.Errorf("ADD without networks: %v: %s", err, out)
	}
	if l := ipIn(t, podC, "-o", "link"); strings.Contains(l, "net1") {
		t.Errorf("a pod without networks got net1: %s", l)
	}
	// An unknown network: an error naming the annotation's value, and
	// nothing left behind.
	out, err = run("ADD", "ctr-bad", "bad", podC)
	if err == nil || !strings.Contains(out, "other/net@net2") || !strings.Contains(out, "other/net") {
		t.Errorf("ADD with an unknown network: %v: %s", err, out)
	}
	if l := ipIn(t, node, "-o", "link"); strings.Contains(l, HostInterface("ctr-bad", "net1")) {
		t.Errorf("a failed ADD left its host end: %s", l)
	}

	// DEL: the host end (and so the pod end) goes; again, no error.
	for i := 0; i < 2; i++ {
		if out, err := run("DEL", "ctr-a", "a", podA); err != nil {
			t.Fatalf("DEL %d: %v: %s", i, err, out)
		}
	}
	if _, err := netlinkIn(t, node).LinkByName(host); err == nil {
		t.Errorf("host end %s still there after DEL", host)
	}
	if l := ipIn(t, podA, "-o", "link"); strings.Contains(l, "net1") {
		t.Errorf("pod end still there after DEL: %s", l)
	}
	// DEL after the pod's namespace is gone, and with no apiserver.
	deleteNetns(podB)
	srv.Close()
	if out, err := run("DEL", "ctr-b", "b", podB); err != nil {
		t.Errorf("DEL with the pod namespace gone: %v: %s", err, out)
	}
	if l := ipIn(t, node, "-o", "link", "show", "master", "neon-br0"); strings.TrimSpace(l) != "" {
		t.Errorf("ports left on the node's bridge: %s", l)
	}
	// VERSION.
	c := exec.Command(bin)
	c.Env = []string{"CNI_COMMAND=VERSION"}
	c.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	if out, err := c.Output(); err != nil || !strings.Contains(string(out), `"0.4.0"`) || !strings.Contains(string(out), `"1.1.0"`) {
		t.Errorf("VERSION: %s %v", out, err)
	}
}

func makeNetns(t *testing.T, name string) string {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	path := "/run/netns/" + name
	t.Cleanup(func() { deleteNetns(path) })
	ipIn(t, path, "link", "set", "lo", "up")
	return path
}

func deleteNetns(path string) { _ = exec.Command("ip", "netns", "del", filepath.Base(path)).Run() }

func ipIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + ns, "ip"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
	}
	return string(out)
}

func netlinkIn(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromPath(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// inNetns runs f on a thread in the network namespace ns: sockets it makes
// stay in that namespace.
func inNetns(t *testing.T, ns string, f func() error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		panic(fmt.Sprintf("cannot return to the original network namespace: %v", err))
	}
	if ferr != nil {
		t.Fatalf("in %s: %v", ns, ferr)
	}
}
