package core

import (
	"testing"
	"time"
)

func TestFailureRate(t *testing.T) {
	f := FailureRate{Interval: 120 * time.Second, Threshold: 2}
	f.Record(t0)
	f.Record(t0.Add(10 * time.Second))
	if f.Stuck(t0.Add(10 * time.Second)) {
		t.Fatal("stuck at the threshold")
	}
	f.Record(t0.Add(20 * time.Second))
	if !f.Stuck(t0.Add(20 * time.Second)) {
		t.Fatal("not stuck past the threshold")
	}
	// The first failure leaves the window at 120 s.
	if f.Stuck(t0.Add(120 * time.Second)) {
		t.Fatal("still stuck once a failure left the window")
	}
	if (&FailureRate{Interval: time.Minute}).Stuck(t0) {
		t.Fatal("no threshold means never stuck")
	}
}
