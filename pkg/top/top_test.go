package top

import (
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

var t0 = time.Date(2026, 12, 1, 18, 30, 5, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// vm is a running demo VM: 0.25–2 vCPUs, 2–8 slots of 256Mi.
func vm(mod func(*vmv1.VirtualMachine)) *vmv1.VirtualMachine {
	v := &vmv1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "pg-1", Namespace: "default"},
		Spec: vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
			CPUs:           vmv1.CPUs{Min: 250, Max: 2000, Use: 2000},
			MemorySlotSize: resource.MustParse("256Mi"),
			MemorySlots:    vmv1.MemorySlots{Min: 2, Max: 8, Use: 4},
		}},
		Status: vmv1.VirtualMachineStatus{
			Phase: vmv1.VmRunning, CPUs: ptr(vmv1.MilliCPU(1250)), MemorySize: ptr(resource.MustParse("768Mi")),
			RestartCount: 1, Node: "node-a", PodIP: "10.250.1.7",
		},
	}
	if mod != nil {
		mod(v)
	}
	return v
}

func revision(value int64, flags vmv1.RevisionFlags, at time.Time) *vmv1.RevisionWithTime {
	return &vmv1.RevisionWithTime{Revision: vmv1.Revision{Value: value, Flags: flags}, UpdatedAt: metav1.NewTime(at)}
}

func TestRow(t *testing.T) {
	table := NewTable([]string{"pg-1"})
	if got, want := table.Header(), "TIME      VM    PHASE         VCPUS      MEMORY       LOAD1  PERMIT      LATENCY    RESTARTS  NODE        NOTE"; got != want {
		t.Fatalf("header:\n got %q\nwant %q", got, want)
	}
	cases := []struct {
		name string
		vm   *vmv1.VirtualMachine
		load func(*Sample)
		want string
	}{
		{
			name: "scaling up, permit granted, controller not there yet",
			vm: vm(func(v *vmv1.VirtualMachine) {
				v.Status.Phase = vmv1.VmScaling
				v.Annotations = map[string]string{api.ApprovedAnnotation: `{"vCPUs":2,"mem":"1Gi"}`, api.RequestedAnnotation: `{"vCPUs":2,"mem":"1Gi"}`}
				v.Spec.TargetRevision = revision(3, vmv1.RevisionFlagUpscale, t0.Add(-4*time.Second))
				v.Status.CurrentRevision = revision(2, vmv1.RevisionFlagDownscale, t0.Add(-time.Minute))
			}),
			load: func(s *Sample) { s.SetLoad(1.875, nil) },
			want: "18:30:05  pg-1  Scaling       1.25/2     768Mi/1Gi    1.88   2/1Gi       up >4s     1         node-a",
		},
		{
			name: "scaled up: latency from the two revisions",
			vm: vm(func(v *vmv1.VirtualMachine) {
				v.Status.CPUs = ptr(vmv1.MilliCPU(2000))
				v.Status.MemorySize = ptr(resource.MustParse("1Gi"))
				v.Annotations = map[string]string{api.ApprovedAnnotation: `{"vCPUs":2,"mem":"1Gi"}`}
				v.Spec.TargetRevision = revision(3, vmv1.RevisionFlagUpscale, t0.Add(-10*time.Second))
				v.Status.CurrentRevision = revision(3, vmv1.RevisionFlagUpscale, t0.Add(-8*time.Second))
			}),
			load: func(s *Sample) { s.SetLoad(2, nil) },
			want: "18:30:05  pg-1  Running       2/2        1Gi/1Gi      2.00   2/1Gi       up 2s      1         node-a",
		},
		{
			name: "partial grant: the request shows in the note",
			vm: vm(func(v *vmv1.VirtualMachine) {
				v.Spec.Guest.CPUs.Use, v.Spec.Guest.MemorySlots.Use = 500, 6
				v.Status.CPUs, v.Status.MemorySize = ptr(vmv1.MilliCPU(500)), ptr(resource.MustParse("1536Mi"))
				v.Annotations = map[string]string{api.ApprovedAnnotation: `{"vCPUs":"500m","mem":"1536Mi"}`, api.RequestedAnnotation: `{"vCPUs":2,"mem":"2Gi"}`}
				v.Spec.TargetRevision = revision(7, vmv1.RevisionFlagDownscale, t0.Add(-3*time.Second))
				v.Status.CurrentRevision = revision(7, vmv1.RevisionFlagDownscale, t0.Add(-3*time.Second))
			}),
			load: func(s *Sample) { s.SetLoad(0.4, nil) },
			want: "18:30:05  pg-1  Running       0.5/0.5    1.5Gi/1.5Gi  0.40   0.5/1.5Gi   down <1s   1         node-a      asked 2/2Gi",
		},
		{
			name: "scrape failed and a bad annotation: both in the note, cut to maxNote",
			vm: vm(func(v *vmv1.VirtualMachine) {
				v.Annotations = map[string]string{api.ApprovedAnnotation: `{"vCPUs":"lots"}`}
			}),
			load: func(s *Sample) { s.SetLoad(0, errors.New("dial tcp 10.250.1.7:9100: connect: connection refused")) },
			want: "18:30:05  pg-1  Running       1.25/2     768Mi/1Gi    ?      ?           -          1         node-a      " +
				"load: dial tcp 10.250.1.7:9100: connect: connection refused; annotation internal.autoscaling.neon.tech/resources-appr...",
		},
		{
			name: "new VM: nothing reported yet, nothing scraped",
			vm: vm(func(v *vmv1.VirtualMachine) {
				v.Status = vmv1.VirtualMachineStatus{}
			}),
			want: "18:30:05  pg-1  -             -/2        -/1Gi        -      -           -          0         -",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := FromVM(c.vm, t0)
			if c.load != nil {
				c.load(&s)
			}
			got := table.Row(s)
			if got != c.want {
				t.Errorf("\n got %q\nwant %q", got, c.want)
			}
		})
	}
}

func TestFailedRowAndLongNote(t *testing.T) {
	table := NewTable([]string{"a-longer-name"})
	row := table.Row(Failed("a-longer-name", t0, errors.New(`virtualmachines.vm.neon.tech "a-longer-name" not found`)))
	want := `18:30:05  a-longer-name  ?             -          -            -      -           -          -         -           virtualmachines.vm.neon.tech "a-longer-name" not found`
	if row != want {
		t.Errorf("\n got %q\nwant %q", row, want)
	}
	long := table.Row(Failed("a-longer-name", t0, errors.New(strings.Repeat("x", 500))))
	if !strings.HasSuffix(long, strings.Repeat("x", maxNote-3)+"...") || strings.Contains(long, strings.Repeat("x", maxNote)) {
		t.Errorf("long error not cut at %d characters: %q", maxNote, long)
	}
}

// A log gets the header once, then a line only for a VM whose row changed.
func TestChanges(t *testing.T) {
	table := NewTable([]string{"a", "b"})
	base := func(name string, at time.Time, load float64) Sample {
		s := FromVM(vm(func(v *vmv1.VirtualMachine) { v.Name = name }), at)
		s.SetLoad(load, nil)
		return s
	}
	steps := []struct {
		samples []Sample
		want    []string
	}{
		{[]Sample{base("a", t0, 1), base("b", t0, 1)}, []string{
			"TIME      VM  PHASE         VCPUS      MEMORY       LOAD1  PERMIT      LATENCY    RESTARTS  NODE        NOTE",
			"18:30:05  a   Running       1.25/2     768Mi/1Gi    1.00   -           -          1         node-a",
			"18:30:05  b   Running       1.25/2     768Mi/1Gi    1.00   -           -          1         node-a",
		}},
		// Only the time moved: nothing to print.
		{[]Sample{base("a", t0.Add(time.Second), 1), base("b", t0.Add(time.Second), 1)}, nil},
		// b's load moved (at the shown precision).
		{[]Sample{base("a", t0.Add(2*time.Second), 1.001), base("b", t0.Add(2*time.Second), 1.5)}, []string{
			"18:30:07  b   Running       1.25/2     768Mi/1Gi    1.50   -           -          1         node-a",
		}},
		// a becomes unreadable, then comes back.
		{[]Sample{Failed("a", t0.Add(3*time.Second), errors.New("timeout")), base("b", t0.Add(3*time.Second), 1.5)}, []string{
			"18:30:08  a   ?             -          -            -      -           -          -         -           timeout",
		}},
		{[]Sample{base("a", t0.Add(4*time.Second), 1), base("b", t0.Add(4*time.Second), 1.5)}, []string{
			"18:30:09  a   Running       1.25/2     768Mi/1Gi    1.00   -           -          1         node-a",
		}},
	}
	for i, st := range steps {
		got := table.Changes(st.samples)
		if strings.Join(got, "\n") != strings.Join(st.want, "\n") {
			t.Errorf("step %d:\n got %q\nwant %q", i, got, st.want)
		}
	}
}

// A terminal frame is the header and every row, with no escape codes in
// the lines themselves (ClearScreen is the caller's).
func TestFrame(t *testing.T) {
	table := NewTable([]string{"a"})
	got := table.Frame([]Sample{FromVM(vm(func(v *vmv1.VirtualMachine) { v.Name = "a" }), t0)})
	if len(got) != 2 || got[0] != table.Header() || strings.ContainsRune(strings.Join(got, ""), '\x1b') {
		t.Fatalf("frame %q", got)
	}
}

func TestUnits(t *testing.T) {
	for m, want := range map[vmv1.MilliCPU]string{250: "0.25", 1000: "1", 1250: "1.25", 2000: "2", 1: "0.001"} {
		if got := CPU(m); got != want {
			t.Errorf("CPU(%d) = %q, want %q", m, got, want)
		}
	}
	for b, want := range map[uint64]string{
		512: "512", 4096: "4Ki", 256 << 20: "256Mi", 768 << 20: "768Mi", 1 << 30: "1Gi",
		1536 << 20: "1.5Gi", 1792 << 20: "1.75Gi", 8 << 30: "8Gi", 1000 << 20: "1000Mi",
	} {
		if got := Bytes(api.Bytes(b)); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", b, got, want)
		}
	}
}

func TestScalingOf(t *testing.T) {
	cases := []struct {
		name            string
		target, current *vmv1.RevisionWithTime
		want            Scaling
	}{
		{"no target", nil, revision(1, 0, t0), Scaling{}},
		{"waiting", revision(2, vmv1.RevisionFlagUpscale, t0.Add(-3*time.Second)), nil, Scaling{Known: true, Direction: "up", Took: 3 * time.Second}},
		{"reached", revision(2, vmv1.RevisionFlagDownscale, t0.Add(-9*time.Second)), revision(2, vmv1.RevisionFlagDownscale, t0.Add(-7*time.Second)),
			Scaling{Known: true, Direction: "down", Done: true, Took: 2 * time.Second}},
		{"clock skew", revision(2, 0, t0), revision(2, 0, t0.Add(-time.Second)), Scaling{Known: true, Done: true}},
		{"both flags", revision(2, vmv1.RevisionFlagUpscale|vmv1.RevisionFlagDownscale, t0), revision(2, 0, t0.Add(time.Second)),
			Scaling{Known: true, Done: true, Took: time.Second}},
	}
	for _, c := range cases {
		if got := scalingOf(c.target, c.current, t0); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
	// The cell has the timestamps' whole seconds, and no made-up fraction.
	for _, c := range []struct {
		s    Scaling
		want string
	}{
		{Scaling{Known: true, Done: true, Took: 2 * time.Second}, "2s"},
		{Scaling{Known: true, Direction: "up", Done: true}, "up <1s"},
		{Scaling{Known: true, Direction: "up", Done: true, Took: 1500 * time.Millisecond}, "up 1s"},
		{Scaling{Known: true, Direction: "down", Took: 953 * time.Millisecond}, "down …"},
		{Scaling{Known: true, Direction: "down", Took: 4200 * time.Millisecond}, "down >4s"},
		{Scaling{}, "-"},
	} {
		if got := scaling(c.s); got != c.want {
			t.Errorf("scaling(%+v) = %q, want %q", c.s, got, c.want)
		}
	}
}
