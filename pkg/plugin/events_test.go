package plugin

import (
	"log/slog"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/plugin/vmpod"
)

// The plugin's own write can overtake the watch, and the watch can
// overtake the write's response; resourceVersions are only compared for
// equality (they are opaque), so the versions here are not numbers.
func TestOwnWritesAndTheWatch(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	e := NewEnforcer(testConfig(), slog.New(slog.DiscardHandler), clk, newFakeCluster(), NewMetrics(nil))
	k := vmKey{"ns", "db"}
	obj := func(rv string) *vmv1.VirtualMachine {
		vm := &vmv1.VirtualMachine{}
		vm.Namespace, vm.Name, vm.ResourceVersion = k.Namespace, k.Name, rv
		return vm
	}
	own := func(rv string) {
		vm, err := vmpod.VMFromObject(obj(rv))
		if err != nil {
			t.Fatal(err)
		}
		e.mu.Lock()
		e.setOwnVMLocked(vm)
		e.mu.Unlock()
	}
	holds := func(want, why string) {
		t.Helper()
		e.mu.Lock()
		defer e.mu.Unlock()
		if got := e.vms[k].vm.ResourceVersion; got != want {
			t.Fatalf("%s: the plugin holds version %q, want %q", why, got, want)
		}
	}

	e.OnVM(obj("x1"))
	own("q7")
	e.OnVM(obj("b3")) // written before the plugin's patch
	holds("q7", "an older watch event after the plugin's write")
	e.OnVM(obj("q7"))
	e.OnVM(obj("a0")) // a later write by someone else
	holds("a0", "the watch caught up, then went on")

	// The watch is ahead of the write's response: the response is
	// older than (or the same as) what the plugin holds.
	e.OnVM(obj("m5"))
	e.OnVM(obj("c2"))
	own("m5")
	holds("c2", "a write response the watch had already gone past")
	e.OnVM(obj("d9"))
	holds("d9", "the watch after a stale write response")

	// The watch relisted and never delivers the write's own version: the
	// plugin takes the watch's word again after ownWriteWait.
	own("z4")
	e.OnVM(obj("r1"))
	holds("z4", "within ownWriteWait of the plugin's write")
	clk.Step(ownWriteWait + time.Second)
	e.OnVM(obj("r2"))
	holds("r2", "after ownWriteWait")
}
