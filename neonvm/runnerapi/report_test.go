package runnerapi_test

import (
	"testing"

	"github.com/vmscale/vmscale/neonvm/runnerapi"
)

func TestLastLines(t *testing.T) {
	lines := []string{"first", "second", "third"}
	for _, c := range []struct {
		limit int
		want  string
	}{
		{100, "first\nsecond\nthird"},
		{13, "second\nthird"}, // "second\n" + "third\n" = 13
		{12, "third"},
		{3, ""},
	} {
		if got := runnerapi.LastLines(lines, c.limit); got != c.want {
			t.Errorf("LastLines(%d) = %q, want %q", c.limit, got, c.want)
		}
	}
}
