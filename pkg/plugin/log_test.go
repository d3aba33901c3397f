package plugin

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2/textlogger"
)

// The plugin's slog lines reach the scheduler's logger with its name, the
// values added on the way, and the klog verbosity they always had.
func TestSlogReachesSchedulerLogger(t *testing.T) {
	var buf bytes.Buffer
	kl := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&buf), textlogger.Verbosity(3))).WithName(Name)
	log := toSlog(kl)
	log.Log(t.Context(), levelDetail, "approved", "vm", "ns/a")
	log.Error("reconcile keeps failing", "err", errors.New("boom"))
	toSlog(kl.WithName("permit")).With("pod", "ns/p").Log(t.Context(), slog.Level(-4), "permit granted")
	toSlog(kl.WithName("permit")).With("pod", "ns/p").Info("permit API listening")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`"approved" logger="AutoscaleEnforcer" vm="ns/a"`,
		`"reconcile keeps failing" logger="AutoscaleEnforcer" err="boom"`,
		`"permit API listening" logger="AutoscaleEnforcer.permit" pod="ns/p"`,
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d\n got %s\nwant …] %s", i, lines[i], w)
		}
	}
}
