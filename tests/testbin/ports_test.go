package testbin

import "testing"

func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p := FreePort(t)
		if p <= 0 || seen[p] {
			t.Fatalf("port %d handed out twice (or invalid)", p)
		}
		seen[p] = true
	}
}
