package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func rule(name, timeout, grace string, extra string) string {
	return fmt.Sprintf(`
mode: enforce
rules:
  - name: %s
    match: {comm: [%s]}
    timeout: %s
    kill: {signal: SIGTERM, grace: %s}
%s`, name, name, timeout, grace, extra)
}

// A matching tree (a parent that ignores SIGTERM, two forked children that
// inherit that) ends at deadline + grace and not before; every child dies;
// a process beside it in the same cgroup lives; the tree cgroup is gone.
func TestTreeEndsAtDeadlinePlusGrace(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-stubborn", "3s", "2s", ""))
	neighbour := cg.start(t, dir, "sleep 1000")
	eng := engine(t, dir, "ovt-stubborn", "trap '' TERM\nsleep 1000 &\nsleep 1000 &\nwait\nwait")
	started := time.Now()
	p := cg.start(t, dir, eng)

	var kids []int
	eventually(t, scaled(15*time.Second), "the tree tracked with its two children", func() bool {
		kids = childPids(p.pid)
		_, ok := a.process(p.pid)
		return ok && len(kids) == 2 && len(a.processes()) == 3
	})
	info, _ := a.process(p.pid)
	// Its state is checked against the deadline below: a slow agent (TCG,
	// a busy host) may see the exec late enough that the read here comes
	// after the deadline.
	if info.Rule != "ovt-stubborn" {
		t.Fatalf("root as tracked: %+v", info)
	}
	if d := info.Deadline.Sub(info.StartedAt); d != 3*time.Second {
		t.Fatalf("deadline - started_at = %v, want 3s", d)
	}
	tree := cg.children(t)
	if len(tree) != 1 || !strings.HasPrefix(tree[0], "overtime.ovt-stubborn.") {
		t.Fatalf("tree cgroups under the test cgroup = %v", tree)
	}
	inTree := pidsOf(t, filepath.Join(cg.dir, tree[0]))
	if len(inTree) != 3 {
		t.Fatalf("tree cgroup holds %v, want the root and its two children", inTree)
	}
	if got := pidsOf(t, cg.dir); len(got) != 1 || got[0] != neighbour.pid {
		t.Fatalf("test cgroup holds %v, want only the neighbour %d", got, neighbour.pid)
	}

	// Times come from the agent's deadline, the kernel's start time + 3s:
	// the process starts a while after the test's fork call (half a second
	// under TCG), so the test's clock before the fork would put the
	// deadline too early.
	deadline := info.Deadline
	if info.StartedAt.Before(started.Add(-50 * time.Millisecond)) { // ticks of 10 ms, clock conversions
		t.Fatalf("started_at %v is before the test started the process (%v)", info.StartedAt, started)
	}
	t.Logf("the process started %v after the test's fork call", info.StartedAt.Sub(started))

	// Running until the deadline; then, within termLate, TERM sent and
	// ignored: terminating, all alive. Each reading is stamped with when
	// its request began (running then) or ended (terminating by then).
	termLate := scaled(500 * time.Millisecond)
	for {
		asked := time.Now()
		info, ok := a.process(p.pid)
		answered := time.Now()
		if !ok {
			t.Fatal("the root left the table before deadline + grace")
		}
		if info.State == "terminating" {
			if answered.Before(deadline) {
				t.Fatalf("terminating at %v, before the deadline %v", answered, deadline)
			}
			t.Logf("terminating within %v after the deadline", answered.Sub(deadline))
			break
		}
		if info.State != "running" {
			t.Fatalf("state %q between start and deadline + grace, want running then terminating", info.State)
		}
		if asked.After(deadline.Add(termLate)) {
			t.Fatalf("still running %v after the deadline (at most %v)", asked.Sub(deadline), termLate)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !p.alive() || !pidAlive(kids[0]) || !pidAlive(kids[1]) {
		t.Fatal("the tree died of a TERM its root ignores")
	}
	// Until just before deadline + grace: nothing killed.
	for time.Now().Before(deadline.Add(2*time.Second - 100*time.Millisecond)) {
		if !p.alive() || !pidAlive(kids[0]) || !pidAlive(kids[1]) {
			t.Fatalf("the tree died %v after the deadline, before deadline + grace (2s)", time.Since(deadline))
		}
		time.Sleep(10 * time.Millisecond)
	}
	killLate := scaled(4 * time.Second)
	if !p.waitDone(time.Until(deadline.Add(2*time.Second + killLate))) {
		t.Fatalf("the tree's root still alive %v after deadline + grace", killLate)
	}
	if early := time.Until(deadline.Add(2 * time.Second)); early > 0 {
		t.Fatalf("root ended %v before deadline + grace", early)
	}
	eventually(t, scaled(15*time.Second), "both children dead", func() bool { return !pidAlive(kids[0]) && !pidAlive(kids[1]) })
	if !neighbour.alive() {
		t.Fatal("the neighbour in the same cgroup was killed")
	}
	if ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("root ended with %v, want SIGKILL", ws)
	}
	eventually(t, scaled(15*time.Second), "the tree cgroup removed", func() bool { return len(cg.children(t)) == 0 })
	eventually(t, scaled(15*time.Second), "nothing alive in the table", func() bool { return liveTracked(a) == 0 })
	if v := a.metric(`overtime_kills_total{result="ok",rule="ovt-stubborn",signal="SIGKILL"}`); v != 1 {
		t.Fatalf("kills_total{SIGKILL,ok} = %v", v)
	}
	if v := a.metric(`overtime_kills_total{result="ok",rule="ovt-stubborn",signal="SIGTERM"}`); v != 1 {
		t.Fatalf("kills_total{SIGTERM,ok} = %v", v)
	}
	if v := a.metric(`overtime_timeouts_total{rule="ovt-stubborn"}`); v != 1 {
		t.Fatalf("timeouts_total = %v", v)
	}
	if v := a.metric(`overtime_kill_latency_seconds_count{rule="ovt-stubborn"}`); v != 1 {
		t.Fatalf("kill latency count = %v", v)
	}
	if v := a.metric(`overtime_process_runtime_seconds_count{outcome="killed",rule="ovt-stubborn"}`); v != 1 {
		t.Fatalf("runtime histogram count{killed} = %v", v)
	}
	var seen []string
	for _, act := range a.actions() {
		if act.PID == p.pid && act.Rule == "ovt-stubborn" {
			seen = append(seen, act.Action+":"+act.Result)
		}
	}
	if strings.Join(seen, ",") != "signal:ok,kill:ok,kill:confirmed" {
		t.Fatalf("actions of the tree = %v", seen)
	}
	// The agent's own record: TERM at the deadline, KILL at deadline +
	// grace, not before (1 ms: API times are rounded to it).
	for _, act := range a.actions() {
		if act.PID != p.pid || act.Result != "ok" {
			continue
		}
		due := deadline
		if act.Action == "kill" {
			due = deadline.Add(2 * time.Second)
		}
		if act.Time.Before(due.Add(-time.Millisecond)) {
			t.Fatalf("%s at %v, before it was due at %v", act.Action, act.Time, due)
		}
		t.Logf("%s %v after it was due", act.Action, act.Time.Sub(due))
	}
	// The kill the agent said it uses at start, for this node's layout and
	// kernel: the v1 freezer, cgroup.kill (5.14), or the v2 freeze.
	want := "cgroup.kill"
	if cg.v1 {
		want = "freezer.state+SIGKILL"
	} else if !hasCgroupKill(t) {
		want = "cgroup.freeze+SIGKILL"
	}
	if ready := a.logLines("enforcer ready"); len(ready) != 1 || ready[0]["kill"] != want {
		t.Fatalf("enforcer ready log lines %v, want one with kill=%s", ready, want)
	}
	if code := a.stop(); code != 0 {
		t.Fatalf("agent exit code on SIGTERM = %d, want 0", code)
	}
}

// A matching process started before the agent is found with its real start
// time; restarting the agent mid-deadline neither resets nor extends it. A
// graceful stop gives the process back to its cgroup and removes the tree
// cgroup.
func TestRestartKeepsRealDeadline(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	eng := engine(t, dir, "ovt-early", "sleep 1000 &\nwait")
	started := time.Now()
	p := cg.start(t, dir, eng)
	time.Sleep(1500 * time.Millisecond)

	// Two starts and a stop of the agent fit before the deadline (the
	// eBPF verifier's work: scaled).
	timeout := scaled(12 * time.Second)
	cfg := rule("ovt-early", timeout.String(), "1s", "")
	a := startAgent(t, cfg)
	info, ok := a.process(p.pid)
	if !ok {
		t.Fatalf("a process started before the agent was not found; tracked: %+v", a.processes())
	}
	// From the test's clock before the fork to the kernel's start time:
	// the fork's own time (scaled).
	if skew := info.StartedAt.Sub(started); skew < -50*time.Millisecond || skew > scaled(100*time.Millisecond) {
		t.Fatalf("started_at is %v off the real start", skew)
	}
	deadline := info.Deadline
	if len(cg.children(t)) != 1 {
		t.Fatalf("no tree cgroup for the scanned process: %v", cg.children(t))
	}
	if code := a.stop(); code != 0 {
		t.Fatalf("graceful stop exit code %d", code)
	}
	if kids := cg.children(t); len(kids) != 0 {
		t.Fatalf("tree cgroups left after a graceful stop: %v", kids)
	}
	if got, kids := pidsOf(t, cg.dir), childPids(p.pid); len(got) != 2 || len(kids) != 1 || !slices.Contains(got, p.pid) || !slices.Contains(got, kids[0]) {
		t.Fatalf("tree not given back to its cgroup: test cgroup holds %v (root %d, children %v)", got, p.pid, kids)
	}
	if !p.alive() {
		t.Fatal("a graceful stop killed the process")
	}

	time.Sleep(1 * time.Second)
	b := startAgent(t, cfg)
	info, ok = b.process(p.pid)
	if !ok {
		t.Fatalf("not found again after the restart; log:\n%s", b.Log())
	}
	if d := info.Deadline.Sub(deadline); d < -20*time.Millisecond || d > 20*time.Millisecond {
		t.Fatalf("restart moved the deadline by %v", d)
	}
	if !p.waitDone(scaled(15 * time.Second)) {
		t.Fatal("not ended after the restart")
	}
	// It dies of SIGTERM at the deadline (12s after its real start).
	if e := time.Since(started); e < timeout-20*time.Millisecond || e > timeout+scaled(1500*time.Millisecond) { // starttime has 10ms ticks
		t.Fatalf("ended %v after its real start, want just after %v", e, timeout)
	}
}

// After kill -9 of the agent, the next start adopts the tree cgroups the
// first one made and still ends their trees at their real deadline.
func TestCrashAdoption(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	// The second agent's start fits before the deadline (scaled).
	timeout := scaled(8 * time.Second)
	cfg := rule("ovt-adopt", timeout.String(), "1s", "")
	a := startAgent(t, cfg)
	eng := engine(t, dir, "ovt-adopt", "trap '' TERM\nsleep 1000 &\nwait\nwait")
	started := time.Now()
	p := cg.start(t, dir, eng)
	eventually(t, scaled(15*time.Second), "tree tracked", func() bool { return len(a.processes()) == 2 })
	tree := cg.children(t)
	if len(tree) != 1 {
		t.Fatalf("tree cgroups: %v", tree)
	}
	a.crash()
	if got := cg.children(t); len(got) != 1 || got[0] != tree[0] {
		t.Fatalf("after kill -9 the tree cgroup should still be there: %v", got)
	}
	b := startAgent(t, cfg)
	if n := len(b.processes()); n != 2 {
		t.Fatalf("adopted %d processes, want 2", n)
	}
	if lines := b.logLines("adopted tree"); len(lines) != 1 {
		t.Fatalf("adoption log lines: %v", lines)
	}
	if !p.waitDone(scaled(15 * time.Second)) {
		t.Fatal("adopted tree not ended")
	}
	if e := time.Since(started); e < timeout+time.Second {
		t.Fatalf("ended after %v, before its real deadline + grace (%v)", e, timeout+time.Second)
	}
	eventually(t, scaled(15*time.Second), "tree cgroup removed", func() bool { return len(cg.children(t)) == 0 })
}

// 2,000 short-lived matching processes leave no trace: every one seen, the
// table empty, no cgroup left, nothing tracked in the kernel.
func TestShortLivedLeaveNoTrace(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-short", "1h", "1s", ""), "--file-tracing-idle", "1s")
	eng := engine(t, dir, "ovt-short", "true")
	loop := cg.start(t, dir, fmt.Sprintf("/bin/sh -c 'i=0; while [ $i -lt 2000 ]; do %s; i=$((i+1)); done'", eng))
	if !loop.waitDone(scaled(2 * time.Minute)) {
		t.Fatalf("2000 runs did not finish in %v", scaled(2*time.Minute))
	}
	eventually(t, scaled(10*time.Second), "2000 execs counted", func() bool {
		return a.metric(`overtime_events_total{type="exec"}`) >= 2000
	})
	for deadline := time.Now().Add(scaled(30 * time.Second)); len(a.processes()) != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the table is not empty %v later: %+v", scaled(30*time.Second), a.processes())
		}
	}
	if lost := a.metric("overtime_events_lost_total"); lost != 0 {
		t.Fatalf("lost %v events", lost)
	}
	if v := a.metric(`overtime_process_runtime_seconds_count{outcome="exited",rule="ovt-short"}`); v != 2000 {
		t.Fatalf("runtime observations = %v, want 2000", v)
	}
	eventually(t, scaled(15*time.Second), "no tree cgroup left", func() bool { return len(cg.children(t)) == 0 })
	// Nothing is left tracked in the kernel either (processes that were
	// reaped before the agent tracked them included): the file
	// tracepoints are detached once the idle time has passed.
	eventually(t, scaled(10*time.Second), "file tracing detached", func() bool { return a.metric("overtime_file_tracing") == 0 })
}

// Bad config: validate and run exit 2, naming file, line and field.
func TestBadConfigExit2(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("mode: enforce\nrules:\n  - name: x\n    match: {comm: [x]}\n    timeout: -1m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"validate", "--config", bad}, {"run", "--config", bad}} {
		out, err := exec.Command(binary, args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Fatalf("%v: err %v, want exit 2; output %s", args, err, out)
		}
		if want := bad + ":5: rules[0].timeout: must be greater than 0"; !strings.Contains(string(out), want) {
			t.Fatalf("%v: output %q lacks %q", args, out, want)
		}
	}
	out, err := exec.Command(binary, "run", "--mode", "chaos").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--mode") {
		t.Fatalf("bad --mode: %v %s", err, out)
	}
	out, err = exec.Command(binary, "validate", "--config", filepath.Join(dir, "missing.yaml")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "missing.yaml") {
		t.Fatalf("missing file: %v %s", err, out)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(rule("ovt-x", "1m", "1s", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(binary, "validate", "--config", good).CombinedOutput(); err != nil {
		t.Fatalf("valid config refused: %v %s", err, out)
	}
}

// kill -9 of the agent mid-kill (after the TERM, before the grace ran out):
// the next start adopts the tree and kills it at its real deadline + grace,
// neither earlier nor later (or, when the next agent was ready only after
// that, at once when it was: the test's bound counts from then on a loaded
// machine, where a start has taken seconds).
func TestCrashMidKill(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	// The second agent's start fits in the grace (scaled).
	grace := scaled(6 * time.Second)
	cfg := rule("ovt-midkill", "3s", grace.String(), "")
	a := startAgent(t, cfg)
	eng := engine(t, dir, "ovt-midkill", "trap '' TERM\nsleep 1000 &\nwait\nwait")
	started := time.Now()
	p := cg.start(t, dir, eng)
	eventually(t, scaled(15*time.Second), "TERM sent", func() bool {
		info, ok := a.process(p.pid)
		return ok && info.State == "terminating"
	})
	a.crash()
	if !p.alive() {
		t.Fatal("the tree died with the agent")
	}
	startAgent(t, cfg)
	ready := time.Since(started)
	if !p.waitDone(scaled(20 * time.Second)) {
		t.Fatal("the adopted tree was not killed")
	}
	due := 3*time.Second + grace
	if e := time.Since(started); e < due-20*time.Millisecond || e > max(due, ready)+scaled(3*time.Second) {
		t.Fatalf("killed %v after its start, want at deadline + grace (%v; the next agent was ready at %v)", e, due, ready)
	}
	eventually(t, scaled(15*time.Second), "tree cgroup removed", func() bool { return len(cg.children(t)) == 0 })
}
