package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The agent sends SIGKILL at deadlines from a thread of its own at the
// real-time priority it says at start: one SCHED_FIFO thread in the
// agent's process, and each kill is sent by it.
func TestKillThreadRunsAsItSays(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, `
mode: enforce
rules:
  - name: ovt-rt
    match: {comm: [ovt-rt]}
    timeout: 2s
    kill: {signal: SIGKILL, grace: 0s}
`)
	recs := a.logLines("kill thread")
	if len(recs) != 1 || recs[0].Str("policy") != "SCHED_FIFO" || recs[0]["priority"] != float64(1) {
		t.Fatalf("start-up records about the kill thread: %v, want one: policy SCHED_FIFO, priority 1", recs)
	}
	var rt []string
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", a.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range tasks {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if policy, _ := strconv.Atoi(f[41-3]); policy == 1 { // SCHED_FIFO
			rt = append(rt, st)
		}
	}
	if len(rt) != 1 {
		t.Fatalf("the agent's SCHED_FIFO threads: %v, want one", rt)
	}

	eng := engine(t, dir, "ovt-rt", "sleep 1000 &\nwait")
	var trees []*proc
	for range 3 {
		trees = append(trees, cg.start(t, dir, eng))
	}
	for _, p := range trees {
		if !p.waitDone(scaled(15 * time.Second)) {
			t.Fatalf("tree of %d not ended at its 2s deadline", p.pid)
		}
	}
	eventually(t, scaled(5*time.Second), "three kills logged", func() bool { return len(a.logLines("killed the tree")) == 3 })
	for _, r := range a.logLines("killed the tree") {
		d, err := time.ParseDuration(r.Str("kill_delay"))
		if r.Str("by") != "kill thread" || err != nil || d < 0 {
			t.Fatalf("kill record %v: want by \"kill thread\" and its delay after the deadline", r)
		}
		t.Logf("pid %v killed %v after its deadline by the kill thread", r["pid"], d)
	}
}
