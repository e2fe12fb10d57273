package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"overtime/internal/node"
)

const resticRule = `
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: 5m
    kill: {signal: SIGTERM, grace: 10s}
    cleanup: {when: [killed], paths: ["**/locks/*", "/tmp/restic-*"]}
`

const s = time.Second

func TestExecMatchTracksAndConfines(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	if !slices.Equal(h.src.comms, []string{"restic"}) || h.src.all {
		t.Fatalf("kernel filter = %v all=%v, want [restic] false", h.src.comms, h.src.all)
	}
	h.exec(100, 1, 1000*s, "restic", "backup", "--stdin")
	h.exec(101, 1, 1000*s, "restic", "snapshots") // no "backup": no match
	if got := h.pids(); !slices.Equal(got, []int{100}) {
		t.Fatalf("tracked pids = %v, want [100]", got)
	}
	if !h.src.tracked[100] || h.src.tracked[101] {
		t.Fatalf("kernel tracked set = %v, want only 100", h.src.tracked)
	}
	// The first candidate was held (file tracing was off): file tracing
	// on, resumed (the fake enforcer refuses a resume before), then
	// confined while it runs. 101 came with file tracing on: not held.
	want := []string{"resume 100", "confine " + treeName("restic", 100, 1000*s) + " 100"}
	if calls := h.enf.callList(); !slices.Equal(calls, want) {
		t.Fatalf("enforcer calls = %v, want %v", calls, want)
	}
	// Decided: off the kernel's hold record, so the guard leaves it alone.
	if !slices.Equal(h.src.holdsDone, []int{100}) {
		t.Fatalf("hold record cleared for %v, want [100]", h.src.holdsDone)
	}
}

func TestDeadlineSignalThenKillThenEnd(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 1000*s, "restic", "backup")
	h.fork(200, 100, 1001*s)
	h.exec(200, 100, 1001*s, "ssh", "backend") // a member execs another program
	name := treeName("restic", 100, 1000*s)

	h.at(1000*s + 5*time.Minute - time.Nanosecond)
	if n := h.enf.count("signal"); n != 0 {
		t.Fatalf("signalled before the deadline")
	}
	if st := h.states(); st[100] != StateRunning || st[200] != StateRunning {
		t.Fatalf("states before deadline = %v", st)
	}
	h.at(1000*s + 5*time.Minute)
	if n := h.enf.count("signal " + name + " 15"); n != 1 {
		t.Fatalf("SIGTERM sent %d times at the deadline, want 1 (calls %v)", n, h.enf.callList())
	}
	if st := h.states(); st[100] != StateTerminating || st[200] != StateTerminating {
		t.Fatalf("states after TERM = %v", st)
	}
	if p := h.a.Processes(); p[1].Rule != "restic" || p[1].Comm != "ssh" {
		t.Fatalf("member after exec = %+v, want rule restic comm ssh", p[1])
	}
	h.at(1000*s + 5*time.Minute + 10*s - time.Nanosecond)
	if h.enf.count("kill") != 0 {
		t.Fatal("killed before deadline + grace")
	}
	killAt := 1000*s + 5*time.Minute + 10*s
	h.at(killAt)
	if h.enf.count("kill "+name) != 1 {
		t.Fatalf("no SIGKILL at deadline + grace: %v", h.enf.callList())
	}
	h.exit(200, killAt+2*time.Millisecond, 9)
	h.exit(100, killAt+3*time.Millisecond, 9)
	if h.enf.count("release "+name) != 1 {
		t.Fatalf("tree cgroup not released after the tree died: %v", h.enf.callList())
	}
	h.reap(200, killAt+4*time.Millisecond)
	h.reap(100, killAt+4*time.Millisecond)
	if got := h.pids(); len(got) != 0 {
		t.Fatalf("table not empty after the tree ended: %v", got)
	}
	if n := testutil.CollectAndCount(h.a.m.killLatency); n != 1 {
		t.Fatalf("kill latency series = %d, want 1", n)
	}
	if v := testutil.ToFloat64(h.a.m.kills.WithLabelValues("restic", "SIGKILL", "ok")); v != 1 {
		t.Fatalf("kills_total{SIGKILL,ok} = %v", v)
	}
	if v := testutil.ToFloat64(h.a.m.timeouts.WithLabelValues("restic")); v != 1 {
		t.Fatalf("timeouts_total = %v", v)
	}
	// The tree never comes back: no confirm timer fires on a dead tree.
	h.at(killAt + time.Hour)
	if h.enf.count("kill") != 1 {
		t.Fatalf("killed again after the tree ended: %v", h.enf.callList())
	}
}

func TestTreeThatDiesOfTermIsNotKilled(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.at(5 * time.Minute)
	h.exit(100, 5*time.Minute+time.Second, 15)
	h.at(5*time.Minute + time.Hour)
	if h.enf.count("kill") != 0 {
		t.Fatalf("SIGKILL sent to a tree that was gone: %v", h.enf.callList())
	}
	err := testutil.CollectAndCompare(h.a.m.runtime, strings.NewReader(`
# HELP overtime_process_runtime_seconds Run time of tracked process trees, observed when the tree ends.
# TYPE overtime_process_runtime_seconds histogram
`+histLines("restic", "killed", 301)), "overtime_process_runtime_seconds")
	if err != nil {
		t.Fatal(err)
	}
}

func TestMonitorModeNeverActs(t *testing.T) {
	h := newHarness(t, "mode: monitor\n"+resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.at(5*time.Minute + 10*s)
	if h.enf.count("signal") != 0 || h.enf.count("kill") != 0 {
		t.Fatalf("monitor mode acted: %v", h.enf.callList())
	}
	if st := h.states(); st[100] != StateOverdue {
		t.Fatalf("state = %v, want overdue", st[100])
	}
	for _, sig := range []string{"SIGTERM", "SIGKILL"} {
		if v := testutil.ToFloat64(h.a.m.kills.WithLabelValues("restic", sig, "skipped_monitor")); v != 1 {
			t.Fatalf("kills_total{%s,skipped_monitor} = %v, want 1", sig, v)
		}
	}
	err := testutil.CollectAndCompare(&tableCollector{a: h.a}, strings.NewReader(`
# HELP overtime_overdue_process_info One series per overdue process still alive (value 1); it goes away with the process.
# TYPE overtime_overdue_process_info gauge
overtime_overdue_process_info{comm="restic",container_id="",pid="100",pod_uid="",rule="restic"} 1
# HELP overtime_overdue_processes Tracked processes past their deadline and still alive, by rule.
# TYPE overtime_overdue_processes gauge
overtime_overdue_processes{rule="restic"} 1
`), "overtime_overdue_processes", "overtime_overdue_process_info")
	if err != nil {
		t.Fatal(err)
	}
	h.exit(100, 6*time.Minute, 0)
	if n := testutil.CollectAndCount(&tableCollector{a: h.a}, "overtime_overdue_process_info"); n != 0 {
		t.Fatalf("_info series outlived its process")
	}
}

func TestStartupScanKeepsRealStartAndAdoptsTrees(t *testing.T) {
	h := newHarness(t, resticRule)
	adopted := treeName("restic", 300, 100*s)
	h.enf.adopt = map[string][]int{adopted: {300, 301}, treeName("gone-rule", 400, 0): {400}, "overtime.not-ours": {400}}
	h.src.scan = []node.Process{
		// Started 4 minutes before "now" (1000s): 1 minute left.
		{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 760 * s, Born: 760 * s},
		{PID: 101, PPID: 100, Comm: "sh", Args: []string{"sh"}, Start: 761 * s, Born: 761 * s},
		{PID: 300, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 100 * s, Born: 100 * s},
		{PID: 301, PPID: 300, Comm: "sleep", Start: 101 * s, Born: 101 * s},
		{PID: 400, PPID: 1, Comm: "x", Start: 1 * s, Born: 1 * s},
		{PID: 1, PPID: 0, Comm: "init", Start: 0, Born: 0},
	}
	h.start()
	if got := h.pids(); !slices.Equal(got, []int{100, 101, 300, 301}) {
		t.Fatalf("tracked after scan = %v", got)
	}
	if h.enf.count("release "+treeName("gone-rule", 400, 0)) != 1 {
		t.Fatalf("a tree cgroup of an unknown rule was not given back: %v", h.enf.callList())
	}
	if h.enf.count("release overtime.not-ours") != 0 {
		t.Fatalf("a cgroup whose name overtime does not make was touched: %v", h.enf.callList())
	}
	// The adopted tree is long overdue: TERM at once (its real deadline).
	h.at(1000 * s)
	if h.enf.count("signal "+adopted) != 1 {
		t.Fatalf("adopted overdue tree not signalled at once: %v", h.enf.callList())
	}
	// The scanned one keeps its real deadline: 760s + 5m = 1060s.
	h.at(1060*s - time.Nanosecond)
	if h.enf.count("signal "+treeName("restic", 100, 760*s)) != 0 {
		t.Fatal("scanned tree signalled before its real deadline")
	}
	h.at(1060 * s)
	if h.enf.count("signal "+treeName("restic", 100, 760*s)) != 1 {
		t.Fatalf("scanned tree not signalled at its real deadline: %v", h.enf.callList())
	}
}

// A scan's start times are clock ticks (10 ms), so a child forked right
// after its parent's exec is often born in the same tick, and may be
// listed first: the scan still takes parents before their children.
func TestScanTakesParentsBeforeChildrenBornInTheSameTick(t *testing.T) {
	h := newHarness(t, resticRule)
	h.src.scan = []node.Process{
		{PID: 503, PPID: 502, Comm: "cat", Start: 5 * s, Born: 5 * s},
		{PID: 502, PPID: 501, Comm: "sleep", Start: 5 * s, Born: 5 * s},
		{PID: 501, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 5 * s, Born: 5 * s},
		{PID: 600, PPID: 1, Comm: "sleep", Start: 5 * s, Born: 5 * s},
		{PID: 1, PPID: 0, Comm: "init", Start: 0, Born: 0},
	}
	h.start()
	if got := h.pids(); !slices.Equal(got, []int{501, 502, 503}) {
		t.Fatalf("tracked after scan = %v, want the restic tree 501, 502, 503", got)
	}
}

func TestShortLivedProcessesLeaveNoTrace(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	for i := 0; i < 2000; i++ {
		pid := 1000 + i
		at := time.Duration(i) * time.Millisecond
		h.exec(pid, 1, at, "restic", "backup")
		h.exit(pid, at+time.Microsecond, 0)
		h.reap(pid, at+2*time.Microsecond)
	}
	if n := len(h.a.procs) + len(h.a.trees); n != 0 {
		t.Fatalf("table holds %d entries after 2000 short-lived processes", n)
	}
	if h.enf.count("release") != 2000 {
		t.Fatalf("released %d tree cgroups, want 2000", h.enf.count("release"))
	}
}

func TestZombieAndOrphan(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.fork(101, 100, s)
	h.fork(102, 100, s)
	h.exit(102, 2*s, 0) // never reaped by 100
	h.exit(100, 3*s, 0) // 101 runs on: orphan
	h.at(3*s + zombieAfter)
	st := h.states()
	if st[102] != StateZombie {
		t.Fatalf("unreaped child state = %v, want zombie", st[102])
	}
	if p := h.a.Processes(); !p[1].Orphaned || p[0].Orphaned {
		t.Fatalf("orphan flags = %v/%v, want 101 orphaned only", p[0].Orphaned, p[1].Orphaned)
	}
	err := testutil.CollectAndCompare(&tableCollector{a: h.a}, strings.NewReader(`
# HELP overtime_orphaned_processes Tracked processes still alive after the process that started them exited, by rule.
# TYPE overtime_orphaned_processes gauge
overtime_orphaned_processes{rule="restic"} 1
# HELP overtime_zombie_processes Tracked processes that exited and were never reaped by their parent, by rule.
# TYPE overtime_zombie_processes gauge
overtime_zombie_processes{rule="restic"} 2
# HELP overtime_tracked_processes Processes tracked now (alive), by rule.
# TYPE overtime_tracked_processes gauge
overtime_tracked_processes{rule="restic"} 1
`), "overtime_orphaned_processes", "overtime_zombie_processes", "overtime_tracked_processes")
	if err != nil {
		t.Fatal(err)
	}
}

// An exited process whose reap record never came, but that procfs shows
// reaped, leaves the table at the zombie check instead of being called a
// zombie.
func TestReapedWithoutReapRecord(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.exec(200, 1, 0, "restic", "backup")
	h.exit(100, s, 0)
	h.exit(200, s, 0)
	h.src.reapedPIDs = map[int]bool{100: true}
	h.at(s + zombieAfter)
	if st := h.states(); len(st) != 1 || st[200] != StateZombie {
		t.Fatalf("states = %v, want only 200, a zombie", st)
	}
	if _, ok := h.a.trees[treeName("restic", 100, 0)]; ok {
		t.Fatal("the reaped tree is still in the table")
	}
}

func TestGoneAtConfineIsDropped(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.at(0)
	h.enf.gone[100] = true
	h.enf.gone[200] = true
	h.exec(100, 1, 0, "restic", "backup")
	h.exec(200, 1, 0, "restic", "backup")
	// 100's exit and reap events come: it ends normally.
	h.exit(100, time.Millisecond, 0)
	h.reap(100, time.Millisecond)
	if v := testutil.CollectAndCount(h.a.m.runtime); v != 1 {
		t.Fatalf("runtime series = %d, want 1", v)
	}
	// 200's never come: it is retired after goneGrace.
	h.at(goneGrace - time.Nanosecond)
	if _, ok := h.a.procs[200]; !ok {
		t.Fatal("retired before goneGrace")
	}
	h.at(goneGrace)
	if n := len(h.a.procs) + len(h.a.trees); n != 0 {
		t.Fatalf("a process gone before confinement stayed in the table (%d entries)", n)
	}
}

func TestMassDeadlineOneWake(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	for i := 0; i < 500; i++ {
		h.exec(1000+i, 1, 0, "restic", "backup")
	}
	next, ok := h.a.nextWake()
	if !ok || next != 5*time.Minute {
		t.Fatalf("next wake = %v %v", next, ok)
	}
	h.at(5 * time.Minute)
	if n := h.enf.count("signal"); n != 500 {
		t.Fatalf("one wake-up signalled %d trees, want 500", n)
	}
}

func TestLimitMaxTracked(t *testing.T) {
	h := newHarness(t, "limits: {max_tracked_processes: 2}\n"+resticRule)
	h.start()
	for i := 0; i < 5; i++ {
		h.exec(100+i, 1, 0, "restic", "backup")
	}
	if n := len(h.a.procs); n != 2 {
		t.Fatalf("tracked %d, want the limit 2", n)
	}
	if v := testutil.ToFloat64(h.a.m.limitHits.WithLabelValues("max_tracked_processes")); v != 3 {
		t.Fatalf("limit hits = %v, want 3", v)
	}
}

func TestLostEventsResync(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.exec(101, 1, 0, "restic", "backup")
	// 101 died and 102 started while events were lost.
	h.src.scan = []node.Process{
		{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 0, Born: 0},
		{PID: 102, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: s, Born: s},
	}
	h.send(node.Event{Type: node.EventLost, Lost: 7})
	if got := h.pids(); !slices.Equal(got, []int{100, 102}) {
		t.Fatalf("after resync = %v, want [100 102]", got)
	}
	if v := testutil.ToFloat64(h.a.m.resyncs); v != 1 {
		t.Fatalf("resyncs = %v", v)
	}
	if v := testutil.ToFloat64(h.a.m.lost); v != 7 {
		t.Fatalf("lost = %v", v)
	}
}

// histLines renders the runtime histogram with one observation of v seconds.
func histLines(rule, outcome string, v float64) string {
	var b strings.Builder
	for _, le := range []float64{0.1, 1, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400} {
		n := 0
		if v <= le {
			n = 1
		}
		fmt.Fprintf(&b, "overtime_process_runtime_seconds_bucket{outcome=%q,rule=%q,le=\"%g\"} %d\n", outcome, rule, le, n)
	}
	fmt.Fprintf(&b, "overtime_process_runtime_seconds_bucket{outcome=%q,rule=%q,le=\"+Inf\"} 1\n", outcome, rule)
	fmt.Fprintf(&b, "overtime_process_runtime_seconds_sum{outcome=%q,rule=%q} %g\n", outcome, rule, v)
	fmt.Fprintf(&b, "overtime_process_runtime_seconds_count{outcome=%q,rule=%q} 1\n", outcome, rule)
	return b.String()
}

func TestRootOrphanedWhenItsCallerExits(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 50, 0, "restic", "backup")
	if h.src.parents[100] != 50 {
		t.Fatalf("parent of the root not watched: %v", h.src.parents)
	}
	if p := h.a.Processes(); p[0].Orphaned {
		t.Fatal("orphaned before its parent exited")
	}
	h.send(node.Event{Type: node.EventOrphan, PID: 100, PPID: 50})
	if p := h.a.Processes(); !p[0].Orphaned {
		t.Fatal("not orphaned after its parent exited")
	}
	if v := testutil.ToFloat64(h.a.m.events.WithLabelValues("exec")); v != 1 {
		t.Fatalf("events_total{exec} = %v", v)
	}
}

func TestMaxRunningCapsAtExec(t *testing.T) {
	cfg := strings.Replace(resticRule, "timeout: 5m", "timeout: 5m\n    max_running: 2", 1)
	h := newHarness(t, cfg)
	h.src.scan = []node.Process{{PID: 90, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 0, Born: 0}}
	h.start() // one found running counts toward the cap
	h.exec(100, 1, s, "restic", "backup")
	h.exec(101, 1, s, "restic", "backup") // third: capped
	if h.enf.count("kill "+treeName("restic", 101, s)) != 1 || h.enf.count("kill") != 1 {
		t.Fatalf("calls %v, want only 101 killed at exec", h.enf.callList())
	}
	if v := testutil.ToFloat64(h.a.m.capped.WithLabelValues("restic")); v != 1 {
		t.Fatalf("capped_total = %v", v)
	}
	h.exit(101, 2*s, 9)
	h.exit(90, 2*s, 0) // a slot frees up
	h.exec(102, 1, 3*s, "restic", "backup")
	if h.enf.count("kill") != 1 {
		t.Fatalf("a process under the cap was killed: %v", h.enf.callList())
	}
	h.exec(103, 1, 3*s, "restic", "backup")
	if h.enf.count("kill "+treeName("restic", 103, 3*s)) != 1 {
		t.Fatalf("over the cap again but not killed: %v", h.enf.callList())
	}
	acts := h.a.Actions()
	if last := acts[len(acts)-1]; last.Action != "cap" || last.Result != "ok" || last.PID != 103 {
		t.Fatalf("last action = %+v", last)
	}
}

// A short-lived engine over the cap may exit before its confinement: the
// kill at exec then finds nothing left, and that is no error.
func TestCapOfAnEngineAlreadyGone(t *testing.T) {
	cfg := strings.Replace(resticRule, "timeout: 5m", "timeout: 5m\n    max_running: 1", 1)
	h := newHarness(t, cfg)
	h.start()
	h.exec(100, 1, s, "restic", "backup")
	h.enf.gone[101] = true
	h.exec(101, 1, s, "restic", "backup")
	if h.enf.count("kill "+treeName("restic", 101, s)) != 1 {
		t.Fatalf("calls %v, want 101 killed at exec", h.enf.callList())
	}
	acts := h.a.Actions()
	if last := acts[len(acts)-1]; last.Action != "cap" || last.Result != "ok" || last.PID != 101 {
		t.Fatalf("last action = %+v, want cap ok", last)
	}
}

func TestMaxRunningMonitorOnlyCounts(t *testing.T) {
	cfg := "mode: monitor\n" + strings.Replace(resticRule, "timeout: 5m", "timeout: 5m\n    max_running: 1", 1)
	h := newHarness(t, cfg)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.exec(101, 1, 0, "restic", "backup")
	if h.enf.count("kill") != 0 {
		t.Fatalf("monitor mode killed: %v", h.enf.callList())
	}
	if v := testutil.ToFloat64(h.a.m.capped.WithLabelValues("restic")); v != 1 {
		t.Fatalf("capped_total = %v", v)
	}
}

func TestHeldExecsAreResumedUnlessCapped(t *testing.T) {
	cfg := strings.Replace(resticRule, "timeout: 5m", "timeout: 5m\n    max_running: 1", 1)
	h := newHarness(t, cfg)
	h.start()
	if !slices.Equal(h.src.hold, []string{"restic"}) {
		t.Fatalf("held comms = %v", h.src.hold)
	}
	h.exec(100, 1, 0, "restic", "backup")    // under the cap: resumed
	h.exec(101, 1, 0, "restic", "snapshots") // no match: resumed
	h.exec(102, 1, 0, "restic", "backup")    // capped: killed, never resumed
	h.fork(103, 100, s)
	h.exec(103, 100, s, "restic", "backup") // a member's exec is never held
	got := []string{}
	for _, c := range h.enf.callList() {
		if strings.HasPrefix(c, "resume") || strings.HasPrefix(c, "kill") {
			got = append(got, c)
		}
	}
	want := []string{"resume 100", "resume 101", "kill " + treeName("restic", 102, 0)}
	if !slices.Equal(got, want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	// Each held one is taken off the kernel's hold record once decided,
	// the capped one too (it is ended: the guard must not resume it).
	if !slices.Equal(h.src.holdsDone, []int{100, 101, 102}) {
		t.Fatalf("hold record cleared for %v, want [100 101 102]", h.src.holdsDone)
	}
}

func TestResyncResumesHeldCandidatesWhoseExecWasLost(t *testing.T) {
	cfg := strings.Replace(resticRule, "timeout: 5m", "timeout: 5m\n    max_running: 5", 1)
	h := newHarness(t, cfg)
	h.start()
	// Three candidates whose exec records were lost: any may have been
	// stopped at exec (a held comm, or file tracing was off), so all are
	// resumed; 100 matches and is tracked, the others are dropped.
	h.src.pending = []int{100, 101, 102}
	h.src.scan = []node.Process{
		{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: s, Born: s},
		{PID: 101, PPID: 1, Comm: "restic", Args: []string{"restic", "check"}, Start: s, Born: s},
		{PID: 102, PPID: 1, Comm: "other", Args: []string{"other"}, Start: s, Born: s},
	}
	h.send(node.Event{Type: node.EventLost, Lost: 3})
	calls := strings.Join(h.enf.callList(), ",")
	if !strings.Contains(calls, "resume 100,") || !strings.Contains(calls, "resume 101,") || !strings.HasSuffix(calls, ",resume 102") {
		t.Fatalf("calls = %s", calls)
	}
	if _, ok := h.a.procs[100]; !ok || h.src.tracked[101] || h.src.tracked[102] {
		t.Fatalf("after resync: table %v, kernel tracked %v", h.pids(), h.src.tracked)
	}
}

// A tree cgroup still busy with exiting tasks is removed by retries off
// the loop, while the loop goes on.
func TestBusyTreeCgroupReleasedOffTheLoop(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.at(0)
	h.enf.mu.Lock()
	h.enf.busy = 2
	h.enf.mu.Unlock()
	h.exec(100, 1, 0, "restic", "backup")
	h.exit(100, 0, 0) // waits for the removal, retries included
	name := treeName("restic", 100, 0)
	if n := h.enf.count("release " + name); n != 3 {
		t.Fatalf("release tries = %d, want 3 (two busy, then done)", n)
	}
	h.at(time.Hour)
	if n := h.enf.count("release " + name); n != 3 {
		t.Fatalf("released again after success: %d", n)
	}
}

func TestStopReleasesCgroupsWaitingForARetry(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.at(0)
	h.enf.mu.Lock()
	h.enf.busy = 1
	h.enf.mu.Unlock()
	h.exec(100, 1, 0, "restic", "backup")
	// The exit starts the removal; the stop comes while its retry waits.
	h.a.mu.Lock()
	h.a.handle(node.Event{Type: node.EventExit, PID: 100})
	h.a.handle(node.Event{Type: node.EventReap, PID: 100})
	h.a.mu.Unlock()
	name := treeName("restic", 100, 0)
	h.a.shutdown()
	if n := h.enf.count("release " + name); n != 2 {
		t.Fatalf("release tries = %d, want the busy one and the retry, before the stop ends", n)
	}
}

func TestResyncRetiresLostExitsAndReaps(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.fork(101, 100, s)
	h.fork(102, 100, s)
	h.exit(102, 2*s, 0) // exited, its reap event will be lost
	// Lost: 101's exit (now a zombie), 102's reap (now gone).
	h.src.scan = []node.Process{
		{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Start: 0, Born: 0},
		{PID: 101, PPID: 100, Comm: "restic", Start: s, Born: s, Zombie: true},
	}
	h.send(node.Event{Type: node.EventLost, Lost: 2})
	st := h.states()
	if _, ok := st[102]; ok {
		t.Fatalf("a reaped member is still in the table: %v", st)
	}
	if st[101] != StateExited || st[100] != StateRunning {
		t.Fatalf("states after resync = %v, want 101 exited, 100 running", st)
	}
}

func TestFileTracingOnlyWhileSomethingIsTracked(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	if h.src.filesOn || len(h.src.filesLog) != 0 {
		t.Fatalf("file tracing at start with nothing tracked: %v", h.src.filesLog)
	}
	// Held at exec (file tracing off): tracing goes on before it runs on.
	h.exec(100, 1, 1000*s, "restic", "backup")
	if !slices.Equal(h.src.filesLog, []string{"on"}) || !slices.Contains(h.enf.callList(), "resume 100") {
		t.Fatalf("files %v, calls %v", h.src.filesLog, h.enf.callList())
	}
	if v := testutil.ToFloat64(h.a.m.fileTracing); v != 1 {
		t.Fatalf("overtime_file_tracing = %v", v)
	}
	h.at(1001 * s)
	h.exit(100, 1001*s, 0)
	h.reap(100, 1001*s)
	h.at(1001*s + DefaultFilesIdle - 1)
	if !h.src.filesOn {
		t.Fatal("file tracing off before the idle time")
	}
	// Something the kernel tracks (an exec on its way): stays on, retried.
	h.src.tracking = true
	h.at(1001*s + DefaultFilesIdle)
	if !h.src.filesOn || !slices.Equal(h.src.filesLog, []string{"on", "busy"}) {
		t.Fatalf("files %v", h.src.filesLog)
	}
	h.src.tracking = false
	h.at(1001*s + 2*DefaultFilesIdle)
	if h.src.filesOn || !slices.Equal(h.src.filesLog, []string{"on", "busy", "off"}) {
		t.Fatalf("files %v", h.src.filesLog)
	}
	if v := testutil.ToFloat64(h.a.m.fileTracing); v != 0 {
		t.Fatalf("overtime_file_tracing = %v", v)
	}
	// A tree alive at the idle time keeps it on.
	h.exec(200, 1, 1100*s, "restic", "backup")
	h.exec(201, 1, 1100*s, "restic", "backup")
	h.exit(200, 1101*s, 0)
	h.reap(200, 1101*s)
	h.at(1200 * s)
	if !h.src.filesOn || !slices.Equal(h.src.filesLog, []string{"on", "busy", "off", "on"}) {
		t.Fatalf("files %v with tree 201 alive", h.src.filesLog)
	}
	for _, c := range h.enf.callList() {
		if strings.Contains(c, "before file tracing") {
			t.Fatalf("calls %v", h.enf.callList())
		}
	}
}

func TestScanSkippedExported(t *testing.T) {
	h := newHarness(t, resticRule)
	h.src.skipped = 3
	err := testutil.GatherAndCompare(h.reg, strings.NewReader(`
# HELP overtime_scan_skipped_processes_total Processes that procfs scans (start-up, resync) left out because they could not be read, other than by exiting.
# TYPE overtime_scan_skipped_processes_total counter
overtime_scan_skipped_processes_total 3
`), "overtime_scan_skipped_processes_total")
	if err != nil {
		t.Fatal(err)
	}
}

func TestFileTracingStaysOnForAnUnfilteredRule(t *testing.T) {
	h := newHarness(t, `rules:
  - name: any
    match: {cgroup: ["/backup/*"]}
    timeout: 1m
`)
	h.start()
	if !h.src.all || !h.src.filesOn {
		t.Fatalf("pass-all %v, file tracing %v", h.src.all, h.src.filesOn)
	}
	h.at(1000*s + 10*DefaultFilesIdle)
	if !slices.Equal(h.src.filesLog, []string{"on"}) {
		t.Fatalf("files %v", h.src.filesLog)
	}
}

// procInfo finds pid in the API's list.
func (h *harness) procInfo(pid int) ProcessInfo {
	h.t.Helper()
	for _, p := range h.a.Processes() {
		if p.PID == pid {
			return p
		}
	}
	h.t.Fatalf("pid %d not in the table %v", pid, h.pids())
	return ProcessInfo{}
}

// A resync keeps every member that still runs in its tree, whatever
// precision its start time came with, and gives it the program procfs shows
// it running: an exec whose record was lost leaves no stale comm, exe or
// args, and later records older than the scan do not bring them back.
func TestResyncRefreshesWhatMembersRun(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	// Start times as the kernel stamps them, in nanoseconds; procfs shows
	// the same starts in clock ticks (10 ms).
	rootBorn := 1000*s + 123456789
	kidBorn := 1001*s + 987654321
	tick := func(d time.Duration) time.Duration { return d / (10 * time.Millisecond) * (10 * time.Millisecond) }
	h.send(node.Event{Type: node.EventExec, PID: 100, PPID: 1, Time: rootBorn, Born: rootBorn,
		Proc: &node.Process{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"},
			Exe: "/usr/bin/restic", Cgroup: "/test", Start: rootBorn, Born: rootBorn}})
	h.send(node.Event{Type: node.EventFork, PID: 101, PPID: 100, Time: kidBorn, Born: kidBorn})
	name := treeName("restic", 100, rootBorn)
	if got := h.procInfo(101); got.Comm != "restic" {
		t.Fatalf("forked member = %+v, want its parent's program until it execs", got)
	}

	// 101 executes ssh; the record is lost.
	root := node.Process{PID: 100, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"},
		Exe: "/usr/bin/restic", Cgroup: "/test/" + name, Start: tick(rootBorn), Born: tick(rootBorn)}
	kid := node.Process{PID: 101, PPID: 100, Comm: "ssh", Args: []string{"ssh", "backend"},
		Exe: "/usr/bin/ssh", Cgroup: "/test/" + name, Start: tick(kidBorn), Born: tick(kidBorn)}
	h.src.scan = []node.Process{root, kid}
	h.at(1010 * s)
	h.send(node.Event{Type: node.EventLost, Lost: 1})
	if got := h.procInfo(101); got.Comm != "ssh" || got.Exe != "/usr/bin/ssh" || !slices.Equal(got.Args, kid.Args) || got.Rule != "restic" {
		t.Fatalf("member after its exec was lost = %+v, want ssh in the restic tree", got)
	}
	// Nothing ended, nothing was made again: the same tree, with its
	// deadline from the root's exec.
	for _, c := range h.enf.callList() {
		if strings.HasPrefix(c, "release") || (strings.HasPrefix(c, "confine") && c != "confine "+name+" 100" && c != "confine "+name+" 101") {
			t.Fatalf("the resync remade the tree: calls %v", h.enf.callList())
		}
	}
	if n := testutil.CollectAndCount(h.a.m.runtime); n != 0 {
		t.Fatalf("%d trees ended at the resync, want none", n)
	}
	if got := h.procInfo(100); !got.Deadline.Equal(h.a.wall(rootBorn + 5*time.Minute)) {
		t.Fatalf("deadline = %v, want the root's exec + 5m", got.Deadline)
	}

	// Records from before that scan, read after it, change nothing: the
	// scan saw the processes later.
	h.send(node.Event{Type: node.EventFork, PID: 101, PPID: 100, Time: kidBorn, Born: kidBorn})
	h.send(node.Event{Type: node.EventExec, PID: 101, PPID: 100, Time: 1005 * s, Born: kidBorn,
		Proc: &node.Process{PID: 101, PPID: 100, Comm: "sh", Args: []string{"sh", "-c", "ssh backend"},
			Exe: "/bin/sh", Start: 1005 * s, Born: kidBorn}})
	if got := h.procInfo(101); got.Comm != "ssh" {
		t.Fatalf("member after records older than the scan = %+v, want ssh still", got)
	}

	// 101 executes gzip; that record is lost too, and a second resync
	// finds it (the table now has its start time from the first scan).
	kid.Comm, kid.Args, kid.Exe = "gzip", []string{"gzip", "-9"}, "/usr/bin/gzip"
	h.src.scan = []node.Process{root, kid}
	h.at(1020 * s)
	h.send(node.Event{Type: node.EventLost, Lost: 1})
	if got := h.procInfo(101); got.Comm != "gzip" || got.Exe != "/usr/bin/gzip" || !slices.Equal(got.Args, kid.Args) {
		t.Fatalf("member after a second lost exec = %+v, want gzip", got)
	}
	// A record newer than the scan applies.
	h.send(node.Event{Type: node.EventExec, PID: 101, PPID: 100, Time: 1021 * s, Born: kidBorn,
		Proc: &node.Process{PID: 101, PPID: 100, Comm: "cat", Args: []string{"cat"},
			Exe: "/usr/bin/cat", Start: 1021 * s, Born: kidBorn}})
	if got := h.procInfo(101); got.Comm != "cat" || got.Rule != "restic" {
		t.Fatalf("member after a new exec = %+v, want cat in the restic tree", got)
	}
	if got := h.pids(); !slices.Equal(got, []int{100, 101}) {
		t.Fatalf("table = %v, want [100 101]", got)
	}
}

// A candidate whose exec record was lost is matched on what procfs shows
// it running at the resync, not on a record older than that scan; a
// record of an earlier process on a reused PID leaves the new one alone.
func TestResyncMatchesOnFreshData(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	born := 1002*s + 5555
	// 200 executed `restic backup` (record still queued), then `restic
	// check` (record lost); 201 executed `restic backup` and only that
	// record was lost; 202 is a new process on the PID of a member whose
	// exit and reap are still queued.
	h.exec(202, 1, 1001*s, "restic", "backup")
	oldBorn := 1001 * s
	h.src.scan = []node.Process{
		{PID: 200, PPID: 1, Comm: "restic", Args: []string{"restic", "check"}, Exe: "/usr/bin/restic", Start: 1002 * s, Born: 1002 * s},
		{PID: 201, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Exe: "/usr/bin/restic", Start: 1003 * s, Born: 1003 * s},
		{PID: 202, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"}, Exe: "/usr/bin/restic", Start: 1004 * s, Born: 1004 * s},
	}
	h.at(1010 * s)
	h.send(node.Event{Type: node.EventLost, Lost: 2})
	if got := h.pids(); !slices.Equal(got, []int{201, 202}) {
		t.Fatalf("after resync = %v, want [201 202]", got)
	}
	// The queued records, older than the scan, arrive now.
	h.send(node.Event{Type: node.EventExec, PID: 200, PPID: 1, Time: 1002*s + 1, Born: born,
		Proc: &node.Process{PID: 200, PPID: 1, Comm: "restic", Args: []string{"restic", "backup"},
			Exe: "/usr/bin/restic", Start: 1002*s + 1, Born: born}})
	h.send(node.Event{Type: node.EventExit, PID: 202, Time: 1003 * s, Born: oldBorn})
	h.send(node.Event{Type: node.EventReap, PID: 202, Time: 1003 * s, Born: oldBorn})
	if got := h.pids(); !slices.Equal(got, []int{201, 202}) {
		t.Fatalf("after records older than the scan = %v, want [201 202]", got)
	}
	if h.src.tracked[200] {
		t.Fatal("a process the scan matched to no rule is tracked in the kernel")
	}
	if st := h.states(); st[202] != StateRunning {
		t.Fatalf("202 = %v after its predecessor's exit record, want running", st[202])
	}
	// Once records are well past the scan, the scan's list is dropped.
	h.exec(300, 1, 1012*s, "restic", "backup")
	if h.a.scanned != nil {
		t.Fatal("the scan's list is kept after records newer than it came")
	}
}
