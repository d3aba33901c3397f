package daemon

import (
	"fmt"
	"reflect"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	got, err := ParseCPUList("0-2,5\n")
	if err != nil || !reflect.DeepEqual(got, []int{0, 1, 2, 5}) {
		t.Fatalf("ParseCPUList = %v, %v", got, err)
	}
	for _, bad := range []string{"a", "3-1", "1-x"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("ParseCPUList(%q) accepted", bad)
		}
	}
}

func TestPlanCPUs(t *testing.T) {
	present := []int{0, 1, 2, 3}
	cases := []struct {
		online []int
		want   int
		plan   string
		err    bool
	}{
		{[]int{0}, 3, "[{1 true} {2 true}]", false},
		{[]int{0, 1, 2, 3}, 2, "[{3 false} {2 false}]", false},
		{[]int{0, 2}, 2, "[]", false},
		{[]int{0, 3}, 3, "[{1 true}]", false},
		{[]int{0, 1}, 1, "[{1 false}]", false},
		{[]int{0}, 5, "", true},
		{[]int{0}, 0, "", true},
	}
	for _, c := range cases {
		got, err := PlanCPUs(present, c.online, c.want)
		if c.err {
			if err == nil {
				t.Errorf("PlanCPUs(%v, %d) accepted", c.online, c.want)
			}
			continue
		}
		if s := fmt.Sprint(got); err != nil || (s != c.plan && !(len(got) == 0 && c.plan == "[]")) {
			t.Errorf("PlanCPUs(%v, %d) = %v, %v; want %s", c.online, c.want, got, err, c.plan)
		}
		for _, ch := range got {
			if ch.CPU == 0 {
				t.Errorf("plan touches cpu0: %v", got)
			}
		}
	}
}

func TestParseMilliCPU(t *testing.T) {
	for in, want := range map[string]int{"1500": 1500, "250m": 250, " 2000\n": 2000} {
		if got, err := ParseMilliCPU(in); err != nil || got != want {
			t.Errorf("ParseMilliCPU(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "0", "-5", "1.5", "x"} {
		if _, err := ParseMilliCPU(bad); err == nil {
			t.Errorf("ParseMilliCPU(%q) accepted", bad)
		}
	}
}
