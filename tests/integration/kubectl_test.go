package integration

import (
	"context"
	"io"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// kubectl prints the columns the CRD declares, reading status the controller
// writes; Restarts reads .status.restartCount.
func TestKubectlPrinterColumns(t *testing.T) {
	ns := newNamespace(t, "printer")
	ctx := context.Background()
	vm := mustYAML(t, validVM)
	vm.SetNamespace(ns)
	vm.SetName("printed")
	if err := k8sClient.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	var typed vmv1.VirtualMachine
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "printed"}, &typed); err != nil {
		t.Fatal(err)
	}
	cpus := vmv1.MilliCPU(1500)
	mem := resource.MustParse("512Mi")
	typed.Status = vmv1.VirtualMachineStatus{
		Phase: vmv1.VmRunning, RestartCount: 3, PodName: "printed-abcde", Node: "node-a",
		CPUs: &cpus, MemorySize: &mem,
	}
	if err := k8sClient.Status().Update(ctx, &typed); err != nil {
		t.Fatalf("update status: %v", err)
	}

	out := kubectl(t, "get", "neonvm", "-n", ns, "-o", "wide")
	cols := parseTable(t, out)
	if len(cols) != 1 {
		t.Fatalf("want one row, got:\n%s", out)
	}
	wantHeader := "NAME CPUS MEMORY POD EXTRAIP STATUS RESTARTS AGE NODE IMAGE CPUSCALINGMODE TARGETARCHITECTURE"
	if h := strings.Join(strings.Fields(strings.Split(out, "\n")[0]), " "); h != wantHeader {
		t.Fatalf("header = %s; want %s", h, wantHeader)
	}
	want := map[string]string{"NAME": "printed", "CPUS": "1500m", "MEMORY": "512Mi", "POD": "printed-abcde",
		"EXTRAIP": "", "STATUS": "Running", "RESTARTS": "3", "NODE": "node-a", "IMAGE": "vm-postgres:15",
		"CPUSCALINGMODE": "QmpScaling", "TARGETARCHITECTURE": ""}
	for col, w := range want {
		if got := cols[0][col]; got != w {
			t.Errorf("column %s = %q; want %q", col, got, w)
		}
	}

	// The short form without -o wide leaves the wide columns out.
	narrow := strings.Fields(strings.Split(kubectl(t, "get", "virtualmachines", "-n", ns), "\n")[0])
	if strings.Join(narrow, " ") != "NAME CPUS MEMORY POD EXTRAIP STATUS RESTARTS AGE" {
		t.Errorf("narrow header = %v", narrow)
	}
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := testEnv.ControlPlane.KubeCtl().Run(args...)
	if err != nil {
		e, _ := io.ReadAll(stderr)
		t.Fatalf("kubectl %v: %v\n%s", args, err, e)
	}
	o, _ := io.ReadAll(stdout)
	return string(o)
}

// parseTable splits kubectl's table output into rows of column -> value,
// cutting each line at the header's column offsets (empty cells are blank).
func parseTable(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	header := lines[0]
	type col struct {
		name  string
		start int
	}
	var cols []col
	for i := 0; i < len(header); {
		if header[i] == ' ' {
			i++
			continue
		}
		j := i
		for j < len(header) && header[j] != ' ' {
			j++
		}
		cols = append(cols, col{header[i:j], i})
		i = j
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		row := map[string]string{}
		for k, c := range cols {
			end := len(line)
			if k+1 < len(cols) && cols[k+1].start < end {
				end = cols[k+1].start
			}
			if c.start < len(line) {
				row[c.name] = strings.TrimSpace(line[c.start:end])
			}
		}
		rows = append(rows, row)
	}
	return rows
}
