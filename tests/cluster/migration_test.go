package cluster

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

type vmmStatus struct {
	Phase         string `json:"phase"`
	SourcePodName string `json:"sourcePodName"`
	TargetPodName string `json:"targetPodName"`
	SourceNode    string `json:"sourceNode"`
	TargetNode    string `json:"targetNode"`
	Info          struct {
		Status      string `json:"status"`
		TotalTimeMs int64  `json:"totalTimeMs"`
		DowntimeMs  int64  `json:"downtimeMs"`
		Ram         struct {
			Transferred int64 `json:"transferred"`
		} `json:"ram"`
	} `json:"info"`
	Conditions []struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	} `json:"conditions"`
}

func waitVMM(t testing.TB, ns, name string, timeout time.Duration, what string, cond func(vmmStatus) error) vmmStatus {
	t.Helper()
	return waitStatus(t, "neonvmm", ns, name, timeout, what, cond)
}

// guestIdentity is what must not change when a VM moves without a
// restart: the kernel's boot id and Postgres' start time; uptime only
// grows.
type guestIdentity struct {
	BootID, PostmasterStart string
	Uptime                  float64
}

func readIdentity(t testing.TB, ip string) guestIdentity {
	t.Helper()
	var id guestIdentity
	poll(t, time.Minute, "guest identity from "+ip, func() error {
		out, err := guestQuery(ip, "select trim(pg_read_file('/proc/sys/kernel/random/boot_id')) || '|' || pg_postmaster_start_time() || '|' || split_part(pg_read_file('/proc/uptime'), ' ', 1)")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		f := strings.Split(out, "|")
		if len(f) != 3 {
			return fmt.Errorf("answer %q", out)
		}
		up, err := strconv.ParseFloat(f[2], 64)
		id = guestIdentity{BootID: f[0], PostmasterStart: f[1], Uptime: up}
		return err
	})
	return id
}

func createMigration(t testing.TB, ns, name, vm, extra string) {
	t.Helper()
	apply(t, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachineMigration
metadata:
  name: %s
spec:
  vmName: %s
%s`, name, vm, extra))
}

// Live migration between the local cluster's two nodes: the guest keeps
// running (same boot id, same Postgres), restartCount stays 0, Postgres
// answers through a Service afterwards and the VM still scales; a
// migration deleted mid-flight and one whose target pod dies leave the VM
// running on its source.
func TestLiveMigration(t *testing.T) {
	kc(t)
	installCRDs(t)
	ns := namespace(t, "migration")
	ctl := startController(t, buildController(t))
	// Restarted from subtests, the controller must still live with the
	// whole test, not end with the subtest.
	restartController := func() {
		ctl.kill()
		ctl = startController(t, ctl.bin)
	}
	defer func() {
		if t.Failed() {
			t.Logf("controller log (tail):\n%s", tail(ctl.log.String(), 60))
		}
	}()
	apply(t, ns, fmt.Sprintf(`apiVersion: vm.neon.tech/v1
kind: VirtualMachine
metadata:
  name: mig
spec:
  restartPolicy: Never
  cpuScalingMode: SysfsScaling
  guest:
    cpus: {min: 1, max: 2, use: 1}
    memorySlotSize: 256Mi
    memorySlots: {min: 2, max: 4, use: 2}
    rootDisk: {image: %q, imagePullPolicy: Never, size: 3Gi}
    ports: [{name: postgres, port: 5432}]
---
apiVersion: v1
kind: Service
metadata:
  name: mig
spec:
  selector: {vm.neon.tech/name: mig}
  ports: [{port: 5432}]
`, Image(t, "vm-postgres")))
	st := waitVM(t, ns, "mig", 6*time.Minute, "VM Running", func(s vmStatus) error {
		if s.Phase != "Running" {
			return fmt.Errorf("phase %q", s.Phase)
		}
		return nil
	})
	before := readIdentity(t, st.PodIP)
	// Something the guest wrote to its disk must move too.
	if out, err := guestQuery(st.PodIP, "create table moved(v text); insert into moved values ('written before the move'); checkpoint"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	t.Run("succeeds", func(t *testing.T) {
		start := time.Now()
		createMigration(t, ns, "move", "mig", "")
		m := waitVMM(t, ns, "move", 6*time.Minute, "migration Succeeded", func(s vmmStatus) error {
			if s.Phase == "Failed" {
				t.Fatalf("migration failed: %+v", s.Conditions)
			}
			if s.Phase != "Succeeded" {
				return fmt.Errorf("phase %q info %+v", s.Phase, s.Info)
			}
			return nil
		})
		t.Logf("migration %s (%s) -> %s (%s): %s wall, QEMU total %d ms, downtime %d ms, %d MiB of RAM sent",
			m.SourcePodName, m.SourceNode, m.TargetPodName, m.TargetNode, time.Since(start).Round(100*time.Millisecond),
			m.Info.TotalTimeMs, m.Info.DowntimeMs, m.Info.Ram.Transferred>>20)
		if m.SourceNode == "" || m.TargetNode == "" || m.SourceNode == m.TargetNode {
			t.Errorf("source node %q, target node %q: want two different nodes", m.SourceNode, m.TargetNode)
		}
		if m.Info.TotalTimeMs <= 0 || m.Info.Status != "completed" {
			t.Errorf("status.info %+v", m.Info)
		}
		vm := waitVM(t, ns, "mig", time.Minute, "VM Running in the target pod", func(s vmStatus) error {
			if s.Phase != "Running" || s.PodName != m.TargetPodName || s.Node != m.TargetNode {
				return fmt.Errorf("phase %q pod %q node %q", s.Phase, s.PodName, s.Node)
			}
			return nil
		})
		if vm.RestartCount != 0 {
			t.Errorf("restartCount %d after a live migration", vm.RestartCount)
		}
		// A guest under TCG is paused for the transfer and resumed on the
		// target (docs/design.md#where-vmscale-differs-and-why); under KVM it moves
		// live.
		logs, _ := TryKubectl(kubeconfig, "-n", ns, "logs", vm.PodName)
		events, _ := TryKubectl(kubeconfig, "-n", ns, "get", "events", "--field-selector", "involvedObject.name=move,reason=StopAndCopy", "-o", "name")
		if tcg := strings.Contains(logs, "accel=tcg"); tcg != (strings.TrimSpace(events) != "") {
			t.Errorf("runner under TCG: %v; StopAndCopy events: %q", tcg, events)
		}
		after := readIdentity(t, vm.PodIP)
		if after.BootID != before.BootID || after.PostmasterStart != before.PostmasterStart || after.Uptime < before.Uptime {
			t.Errorf("the guest restarted: before %+v, after %+v", before, after)
		}
		if out, err := guestQuery(vm.PodIP, "select v from moved"); err != nil || out != "written before the move" {
			t.Errorf("data written before the move: %q (%v)", out, err)
		}
		poll(t, 2*time.Minute, "source pod deleted", func() error {
			if _, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", m.SourcePodName); err == nil {
				return fmt.Errorf("source pod %s still exists", m.SourcePodName)
			}
			return nil
		})
		// Through the Service, from a pod.
		apply(t, ns, netcheckPod("client", Nodes[0], Image(t, "netcheck"), `"serve", ":8080"`, ""))
		waitReady(t, ns, "client")
		poll(t, time.Minute, "Postgres through the Service", func() error {
			out, err := podExec(t, ns, "client", "pg", "mig:5432", "select v from moved")
			if err != nil || strings.TrimSpace(out) != "written before the move" {
				return fmt.Errorf("%q %v", out, err)
			}
			return nil
		})
		// The moved VM still scales.
		Kubectl(t, kubeconfig, "-n", ns, "patch", "neonvm", "mig", "--type=merge", "-p", `{"spec":{"guest":{"cpus":{"use":2}}}}`)
		waitVM(t, ns, "mig", 2*time.Minute, "scaled after the move", func(s vmStatus) error {
			if s.Phase != "Running" || cpuString(s.CPUs) != "2" {
				return fmt.Errorf("phase %q cpus %v", s.Phase, s.CPUs)
			}
			return nil
		})
		before = readIdentity(t, vm.PodIP)
	})

	t.Run("controller restarted mid-flight", func(t *testing.T) {
		src := mustVMStatus(t, ns, "mig")
		// 32 MiB/s: some seconds of transfer to restart the controller in.
		createMigration(t, ns, "resumed", "mig", "  maxBandwidth: 32Mi\n")
		waitVMM(t, ns, "resumed", 5*time.Minute, "migration Running", func(s vmmStatus) error {
			if s.Phase != "Running" {
				return fmt.Errorf("phase %q", s.Phase)
			}
			return nil
		})
		restartController()
		m := waitVMM(t, ns, "resumed", 5*time.Minute, "migration Succeeded after the restart", func(s vmmStatus) error {
			if s.Phase == "Failed" {
				t.Fatalf("migration failed: %+v", s.Conditions)
			}
			if s.Phase != "Succeeded" {
				return fmt.Errorf("phase %q", s.Phase)
			}
			return nil
		})
		vm := waitVM(t, ns, "mig", time.Minute, "VM Running in the target pod", func(s vmStatus) error {
			if s.Phase != "Running" || s.PodName != m.TargetPodName || s.PodName == src.PodName {
				return fmt.Errorf("phase %q pod %q", s.Phase, s.PodName)
			}
			return nil
		})
		if now := readIdentity(t, vm.PodIP); now.BootID != before.BootID || now.PostmasterStart != before.PostmasterStart {
			t.Errorf("the guest restarted: before %+v, now %+v", before, now)
		}
	})

	// A slow transfer (1 MiB/s) leaves time to break it.
	slow := "  maxBandwidth: 1Mi\n"
	t.Run("deleted mid-flight", func(t *testing.T) {
		src := mustVMStatus(t, ns, "mig")
		createMigration(t, ns, "cancel", "mig", slow)
		m := waitVMM(t, ns, "cancel", 5*time.Minute, "migration Running", func(s vmmStatus) error {
			if s.Phase != "Running" {
				return fmt.Errorf("phase %q", s.Phase)
			}
			return nil
		})
		Kubectl(t, kubeconfig, "-n", ns, "delete", "neonvmm", "cancel", "--wait=true", "--timeout=60s")
		assertStillOnSource(t, ns, src, m.TargetPodName, before)
	})
	t.Run("target pod dies", func(t *testing.T) {
		src := mustVMStatus(t, ns, "mig")
		createMigration(t, ns, "doomed", "mig", slow)
		m := waitVMM(t, ns, "doomed", 5*time.Minute, "migration Running", func(s vmmStatus) error {
			if s.Phase != "Running" {
				return fmt.Errorf("phase %q", s.Phase)
			}
			return nil
		})
		Kubectl(t, kubeconfig, "-n", ns, "delete", "pod", m.TargetPodName, "--grace-period=0", "--force", "--wait=false")
		f := waitVMM(t, ns, "doomed", 2*time.Minute, "migration Failed", func(s vmmStatus) error {
			if s.Phase != "Failed" {
				return fmt.Errorf("phase %q", s.Phase)
			}
			return nil
		})
		if len(f.Conditions) == 0 || f.Conditions[0].Reason != "TargetPodFailed" {
			t.Errorf("conditions %+v, want reason TargetPodFailed", f.Conditions)
		}
		assertStillOnSource(t, ns, src, m.TargetPodName, before)
	})
}

func mustVMStatus(t testing.TB, ns, name string) vmStatus {
	t.Helper()
	st, err := getVMStatus(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// assertStillOnSource checks that a broken migration left the VM Running
// in its source pod with the same guest, and the target pod gone.
func assertStillOnSource(t *testing.T, ns string, src vmStatus, targetPod string, before guestIdentity) {
	t.Helper()
	waitVM(t, ns, "mig", 2*time.Minute, "VM Running on its source", func(s vmStatus) error {
		if s.Phase != "Running" || s.PodName != src.PodName {
			return fmt.Errorf("phase %q pod %q (source %s)", s.Phase, s.PodName, src.PodName)
		}
		return nil
	})
	now := readIdentity(t, src.PodIP)
	if now.BootID != before.BootID || now.PostmasterStart != before.PostmasterStart {
		t.Errorf("the guest restarted: before %+v, now %+v", before, now)
	}
	if out, err := guestQuery(src.PodIP, "insert into moved values ('after'); select count(*) from moved"); err != nil || out != "2" && !strings.HasSuffix(out, "\n2") {
		t.Errorf("the guest's Postgres after the broken migration: %q %v", out, err)
	}
	_, _ = guestQuery(src.PodIP, "delete from moved where v = 'after'")
	poll(t, 2*time.Minute, "target pod "+targetPod+" gone", func() error {
		if _, err := TryKubectl(kubeconfig, "-n", ns, "get", "pod", targetPod); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
}
