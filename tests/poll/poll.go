// Package poll is how vmscale's tests wait: retry a condition until it holds
// or a deadline passes, never a bare sleep.
package poll

import (
	"testing"
	"time"
)

// Until calls cond every interval until it returns nil, failing the test
// with cond's last error when timeout passes.
func Until(t testing.TB, timeout, interval time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}
