package e2e

import (
	"testing"
	"time"
)

// max_running: 1. A second engine started while the first lives is ended
// at exec, before it runs a line of its own, and counted; the first, and a
// neighbour in the same cgroup, are left alone. (TestLonghornPileUp is the
// full story; this one is small enough for every cell of the VM matrix.)
func TestCapEndsTheNewerAtExec(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-capped", "10m", "1s", "    max_running: 1\n"))
	neighbour := cg.start(t, dir, "sleep 1000")
	// Each run notes its PID as its first act.
	eng := engine(t, dir, "ovt-capped", `echo $$ >> "$0.ran"`+"\nexec sleep 1000")
	first := cg.start(t, dir, eng)
	eventually(t, scaled(15*time.Second), "the first engine tracked and running", func() bool {
		p, ok := a.process(first.pid)
		return ok && p.State == "running" && len(readPids(eng+".ran")) == 1
	})

	second := cg.start(t, dir, eng)
	if !second.waitDone(scaled(15 * time.Second)) {
		t.Fatalf("the engine past the cap (pid %d) is still alive", second.pid)
	}
	eventually(t, scaled(5*time.Second), "capped_total 1", func() bool {
		return a.metric(`overtime_capped_total{rule="ovt-capped"}`) == 1
	})
	if ran := readPids(eng + ".ran"); len(ran) != 1 || ran[0] != first.pid {
		t.Fatalf("engines that ran: %v, want only the first (%d)", ran, first.pid)
	}
	if !first.alive() || !neighbour.alive() {
		t.Fatalf("first engine alive %v, neighbour alive %v: want both", first.alive(), neighbour.alive())
	}
}
