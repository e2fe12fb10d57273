package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"overtime/internal/node"
)

const stallRule = `
rules:
  - name: eng
    match: {comm: [eng]}
    timeout: 1h
    stall: 10s
    kill: {signal: SIGTERM, grace: 5s}
    cleanup: {paths: ["**/locks/*"]}
`

// run steps the clock from..to in steps, calling each before a step.
func (h *harness) run(from, to, step time.Duration, each func(now time.Duration)) {
	for now := from; now <= to; now += step {
		if each != nil {
			each(now)
		}
		h.at(now)
	}
}

func (h *harness) stalls(rule string) float64 {
	return testutil.ToFloat64(h.a.m.stalls.WithLabelValues(rule))
}

// A tree whose members move no byte and use no CPU is ended after its
// stall, long before its timeout: signal, SIGKILL after the grace, reason
// "stalled"; the deadline that comes later does nothing more.
func TestStalledTreeEnded(t *testing.T) {
	h := newHarness(t, stallRule)
	h.start()
	t0 := 1000 * s
	h.exec(100, 1, t0, "eng")
	h.fork(101, 100, t0+s)
	h.prog.set(100, 5000, 2*s)
	h.prog.set(101, 0, 0)
	name := treeName("eng", 100, t0)

	// Before 10 s without progress: nothing. (101 was forked after the
	// tree's first sample point: its counters start at zero.)
	h.run(t0, t0+10*s-time.Millisecond, 100*time.Millisecond, nil)
	if n := h.enf.count("signal"); n != 0 {
		t.Fatalf("signalled before the stall: %v", h.enf.callList())
	}
	// Samples come about stall/10 = 1 s apart, never two passes in a second.
	if n := h.prog.passCount(); n < 8 || n > 10 {
		t.Fatalf("%d passes in 10 s, want about 9 (stall/10 apart)", n)
	}
	if p := h.a.Processes()[0]; p.LastProgress == nil || p.StalledSeconds < 8 {
		t.Fatalf("root before the stall: last_progress %v stalled_seconds %v", p.LastProgress, p.StalledSeconds)
	}
	h.run(t0+10*s, t0+12*s, 100*time.Millisecond, nil)
	if n := h.enf.count("signal " + name + " 15"); n != 1 {
		t.Fatalf("SIGTERM sent %d times after the stall, want 1: %v", n, h.enf.callList())
	}
	if v := h.stalls("eng"); v != 1 {
		t.Fatalf("stalls_total = %v, want 1", v)
	}
	if v := testutil.ToFloat64(h.a.m.timeouts.WithLabelValues("eng")); v != 0 {
		t.Fatalf("timeouts_total = %v for a stall", v)
	}
	acts := h.a.Actions()
	if last := acts[len(acts)-1]; last.Action != "signal" || !strings.HasPrefix(last.Reason, "stalled") {
		t.Fatalf("action = %+v, want a signal with reason stalled", last)
	}
	if st := h.states(); st[100] != StateTerminating {
		t.Fatalf("state after the stall = %v", st)
	}
	// No more sampling once it is being ended; SIGKILL after the grace.
	passes := h.prog.passCount()
	var killedAt time.Duration
	h.run(t0+12*s, t0+17*s, 100*time.Millisecond, func(now time.Duration) {
		if killedAt == 0 && h.enf.count("kill "+name) == 1 {
			killedAt = now - 100*time.Millisecond
		}
	})
	if killedAt < t0+15*s || killedAt > t0+17*s {
		t.Fatalf("SIGKILL at +%v, want the grace (5 s) after the stall (+10..12 s): %v", killedAt-t0, h.enf.callList())
	}
	if got := h.prog.passCount(); got != passes {
		t.Fatalf("%d more passes while the tree was ended", got-passes)
	}
	var kills []Action
	for _, a := range h.a.Actions() {
		if a.Action == "kill" {
			kills = append(kills, a)
		}
	}
	if len(kills) == 0 || kills[0].Result != "ok" || !strings.HasPrefix(kills[0].Reason, "stalled") {
		t.Fatalf("kill actions = %+v, want the first with reason stalled", kills)
	}
	h.exit(101, t0+17*s+time.Millisecond, 9)
	h.exit(100, t0+17*s+2*time.Millisecond, 9)
	// The kill latency counts from stall + grace, not from the deadline.
	if n := testutil.CollectAndCount(h.a.m.killLatency); n != 1 {
		t.Fatalf("kill latency series = %d", n)
	}
	kills0 := h.enf.count("kill")
	h.at(t0 + 2*time.Hour)
	if h.enf.count("signal") != 1 || h.enf.count("kill") != kills0 {
		t.Fatalf("ended again at the deadline: %v", h.enf.callList())
	}
}

// Progress of any kind keeps a tree alive: bytes written by one member, or
// CPU of at least 1%; a tree that uses under 1% of a CPU and moves nothing
// is stalled.
func TestProgressKeepsTreeAlive(t *testing.T) {
	cases := []struct {
		name    string
		step    func(h *harness)
		stalled bool
	}{
		{"writes", func(h *harness) { h.prog.add(101, 1, 0) }, false},
		{"computes", func(h *harness) { h.prog.add(100, 0, 100*time.Millisecond) }, false},
		// 20 ms a second is 2% of a CPU, in ticks of 10 ms every half second.
		{"computes a little", func(h *harness) { h.prog.add(100, 0, 10*time.Millisecond) }, false},
		// 10 ms every 2 s is 0.5%: a runtime waking now and then.
		{"idles", nil, true},
		// A Go runtime waking its netpoller: a 1-byte pipe read and write,
		// or 8-byte eventfd ones, a few times a second: no data.
		{"wakes through a pipe", func(h *harness) { h.prog.wake(100, 2, 1) }, true},
		{"wakes through an eventfd", func(h *harness) { h.prog.wake(100, 6, 8) }, true},
		// One 4 KiB write among the wakeups is data.
		{"writes among wakeups", func(h *harness) { h.prog.wake(100, 6, 8); h.prog.wake(101, 1, 4096) }, false},
		{"nothing", nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, stallRule)
			h.start()
			t0 := 1000 * s
			h.exec(100, 1, t0, "eng")
			h.fork(101, 100, t0)
			h.prog.set(100, 1e6, time.Minute)
			h.prog.set(101, 1e6, time.Minute)
			step := 500 * time.Millisecond
			h.run(t0, t0+60*s, step, func(now time.Duration) {
				switch {
				case c.step != nil:
					c.step(h)
				case c.name == "idles" && (now-t0)%(2*s) == 0:
					h.prog.add(100, 0, 10*time.Millisecond)
				}
			})
			if got := h.stalls("eng") > 0; got != c.stalled {
				t.Fatalf("stalled = %v, want %v (calls %v)", got, c.stalled, h.enf.callList())
			}
			if !c.stalled {
				if p := h.a.Processes()[0]; p.StalledSeconds > 2 {
					t.Fatalf("stalled_seconds %v on a tree making progress", p.StalledSeconds)
				}
			}
		})
	}
}

// A member that exits and a PID reused by another process are not read as
// progress or as a stall; a member forked later counts from zero.
func TestProgressAcrossMembership(t *testing.T) {
	h := newHarness(t, stallRule)
	h.start()
	t0 := 1000 * s
	h.exec(100, 1, t0, "eng")
	h.prog.set(100, 10, 0)
	h.run(t0, t0+5*s, 500*time.Millisecond, nil)
	// A child forked at +5 s writes 4 KiB once: progress.
	h.fork(102, 100, t0+5*s+time.Millisecond)
	h.prog.set(102, 4096, 0)
	h.run(t0+5500*time.Millisecond, t0+14*s, 500*time.Millisecond, nil)
	if h.stalls("eng") != 0 {
		t.Fatal("stalled though a new member wrote")
	}
	// The child exits; its counters vanish: not progress, not a reset.
	h.exit(102, t0+14*s+time.Millisecond, 0)
	h.reap(102, t0+14*s+2*time.Millisecond)
	delete(h.prog.usage, 102)
	h.run(t0+14500*time.Millisecond, t0+30*s, 500*time.Millisecond, nil)
	if h.stalls("eng") != 1 {
		t.Fatalf("stalls = %v, want 1 about 10 s after the child's write", h.stalls("eng"))
	}
}

// Passes batch every tree due, at most one a second, whatever the number
// of trees; a pass in flight holds the next one back.
func TestPassesBatchedOncePerSecond(t *testing.T) {
	h := newHarness(t, `
rules:
  - name: eng
    match: {comm: [eng]}
    timeout: 1h
    stall: 2s
`)
	h.start()
	t0 := 1000 * s
	for i := range 50 {
		pid := 100 + i
		h.exec(pid, 1, t0+time.Duration(i)*7*time.Millisecond, "eng")
		h.prog.set(pid, 0, 0)
	}
	h.run(t0, t0+10*s, 10*time.Millisecond, func(now time.Duration) {
		for i := range 50 {
			h.prog.add(100+i, 1, 0) // all make progress
		}
	})
	n := h.prog.passCount()
	if n < 9 || n > 11 {
		t.Fatalf("%d passes in 10 s for 50 trees sampled 200 ms apart, want about 10", n)
	}
	for i, p := range h.prog.passes[1:] {
		if len(p) < 40 {
			t.Fatalf("pass %d read %d trees: not batched", i+1, len(p))
		}
	}
	if h.stalls("eng") != 0 {
		t.Fatal("a tree making progress was found stalled")
	}
}

// Monitor mode reports a stall (log, metric, actions) and ends nothing; a
// tree that resumes and stalls again is reported again.
func TestStallMonitorMode(t *testing.T) {
	h := newHarness(t, "mode: monitor\n"+stallRule)
	h.start()
	t0 := 1000 * s
	h.exec(100, 1, t0, "eng")
	h.prog.set(100, 0, 0)
	h.run(t0, t0+20*s, 500*time.Millisecond, nil)
	if h.stalls("eng") != 1 {
		t.Fatalf("stalls_total = %v, want 1", h.stalls("eng"))
	}
	if n := h.enf.count("signal") + h.enf.count("kill"); n != 0 {
		t.Fatalf("monitor mode acted: %v", h.enf.callList())
	}
	var kinds []string
	for _, a := range h.a.Actions() {
		if strings.HasPrefix(a.Reason, "stalled") {
			kinds = append(kinds, a.Action+"/"+a.Result)
		}
	}
	if !slices.Equal(kinds, []string{"signal/skipped_monitor", "kill/skipped_monitor"}) {
		t.Fatalf("stall actions = %v", kinds)
	}
	if v := testutil.ToFloat64(h.a.m.kills.WithLabelValues("eng", "SIGTERM", "skipped_monitor")); v != 1 {
		t.Fatalf("kills_total{skipped_monitor} = %v", v)
	}
	// It writes again, then stalls again.
	h.prog.add(100, 1, 0)
	h.run(t0+20500*time.Millisecond, t0+23*s, 500*time.Millisecond, nil)
	if p := h.a.Processes()[0]; p.StalledSeconds > 2 || p.State != StateRunning {
		t.Fatalf("after progress: %+v", p)
	}
	h.run(t0+23500*time.Millisecond, t0+40*s, 500*time.Millisecond, nil)
	if h.stalls("eng") != 2 {
		t.Fatalf("stalls_total = %v after a second stall, want 2", h.stalls("eng"))
	}
}

// A rule without stall is never sampled.
func TestNoStallNoSampling(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 1000*s, "restic", "backup")
	h.run(1000*s, 1100*s, time.Second, nil)
	if n := h.prog.passCount(); n != 0 {
		t.Fatalf("%d passes for a rule without stall", n)
	}
	if p := h.a.Processes()[0]; p.LastProgress != nil || p.StalledSeconds != 0 {
		t.Fatalf("progress fields without stall: %+v", p)
	}
}

// A member alive some seconds after SIGKILL is unkillable: its state, the
// gauge, an action with what it is blocked on; the kill is retried with
// backoff until it goes.
func TestUnkillableMember(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	t0 := 1000 * s
	h.exec(100, 1, t0, "restic", "backup")
	h.fork(101, 100, t0+s)
	h.prog.blocked[101] = node.Blocked{State: "D", Wchan: "fuse_wait_answer", Stack: []string{"fuse_wait_answer+0x3c/0x60", "fuse_simple_request+0x1a0/0x2d0"},
		FSType: "fuse.ovt", MountPoint: "/mnt/backend", Source: "ovt", File: "/mnt/backend/locks/x"}
	killAt := t0 + 5*time.Minute + 10*s
	h.at(t0 + 5*time.Minute)
	h.at(killAt)
	h.exit(100, killAt+time.Millisecond, 9) // the root dies; 101 does not
	h.at(killAt + s)                        // first confirm: killed again
	if st := h.states(); st[101] != StateKilled {
		t.Fatalf("state 1 s after SIGKILL = %v, want killed", st[101])
	}
	unk := func() float64 {
		for _, p := range h.a.Processes() {
			if p.PID == 101 && p.State == StateUnkillable {
				return 1
			}
		}
		return 0
	}
	h.at(killAt + 3*s) // second confirm, 3 s after: unkillable
	if unk() != 1 {
		t.Fatalf("state 3 s after SIGKILL = %v, want unkillable", h.states()[101])
	}
	err := testutil.CollectAndCompare(&tableCollector{a: h.a}, strings.NewReader(`
# HELP overtime_unkillable_processes Tracked processes still alive some seconds after SIGKILL (uninterruptible sleep), by rule.
# TYPE overtime_unkillable_processes gauge
overtime_unkillable_processes{rule="restic"} 1
`), "overtime_unkillable_processes")
	if err != nil {
		t.Fatal(err)
	}
	var p ProcessInfo
	for _, q := range h.a.Processes() {
		if q.PID == 101 {
			p = q
		}
	}
	if p.Blocked == nil || p.Blocked.MountPoint != "/mnt/backend" || p.Blocked.Wchan != "fuse_wait_answer" {
		t.Fatalf("blocked = %+v", p.Blocked)
	}
	var reasons []string
	for _, a := range h.a.Actions() {
		if a.Action == "unkillable" && a.PID == 101 {
			reasons = append(reasons, a.Reason)
		}
	}
	if len(reasons) != 2 || !strings.Contains(reasons[1], "wchan fuse_wait_answer") || !strings.Contains(reasons[1], "fuse.ovt mount /mnt/backend") {
		t.Fatalf("unkillable actions = %q", reasons)
	}
	// Retried with backoff: 1 s, 2 s, 4 s, ... apart.
	kills := h.enf.count("kill")
	h.at(killAt + 7*s)
	h.at(killAt + 15*s)
	if got := h.enf.count("kill") - kills; got != 2 {
		t.Fatalf("%d kills retried by 15 s, want 2", got)
	}
	// It finally goes: no longer counted.
	h.exit(101, killAt+16*s, 9)
	err = testutil.CollectAndCompare(&tableCollector{a: h.a}, strings.NewReader(`
# HELP overtime_unkillable_processes Tracked processes still alive some seconds after SIGKILL (uninterruptible sleep), by rule.
# TYPE overtime_unkillable_processes gauge
overtime_unkillable_processes{rule="restic"} 0
`), "overtime_unkillable_processes")
	if err != nil {
		t.Fatal(err)
	}
}

// on_unkillable: force_unmount unmounts the mount an unkillable member is
// blocked on, once, when an unmount glob names it; a mount no glob names is
// left alone; monitor mode only says it would.
func TestForceUnmountUnkillable(t *testing.T) {
	const rule = `
rules:
  - name: lh
    match: {comm: [mount.nfs]}
    timeout: 1m
    kill: {signal: SIGKILL, grace: 0s}
    on_unkillable: force_unmount
    unmount: ["/var/lib/longhorn-backupstore-mounts/*"]
`
	cases := []struct {
		name, mode, mount string
		want              string // the unmount action's result
		calls             int
	}{
		{"named", "enforce", "/var/lib/longhorn-backupstore-mounts/srv", "ok", 1},
		{"not named", "enforce", "/mnt/other", "skipped", 0},
		{"monitor", "monitor", "/var/lib/longhorn-backupstore-mounts/srv", "skipped_monitor", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, "mode: "+c.mode+"\n"+rule)
			h.start()
			t0 := 1000 * s
			h.exec(100, 1, t0, "mount.nfs")
			h.fork(101, 100, t0)
			for _, pid := range []int{100, 101} {
				h.prog.blocked[pid] = node.Blocked{State: "D", Wchan: "rpc_wait_bit_killable", FSType: "nfs4", MountPoint: c.mount, Source: "srv:/export"}
			}
			if c.mode == "monitor" {
				// Monitor mode never kills, so nothing is found unkillable:
				// the decision is checked on a tree marked by hand.
				h.a.mu.Lock()
				tr := h.a.procs[100].tree
				tr.killed, tr.killedAt = true, t0
				h.a.unkillable(tr, t0+5*s)
				h.a.mu.Unlock()
				h.settle()
			} else {
				h.run(t0+time.Minute, t0+time.Minute+10*s, s, nil)
			}
			var got []string
			for _, a := range h.a.Actions() {
				if a.Action == "unmount" {
					got = append(got, a.Result)
				}
			}
			// Both members are blocked on the same mount: one unmount.
			if len(got) != 1 || got[0] != c.want {
				t.Fatalf("unmount actions = %v, want [%s] (calls %v)", got, c.want, h.enf.callList())
			}
			if n := h.enf.count("unmount "); n != c.calls {
				t.Fatalf("%d unmount calls, want %d: %v", n, c.calls, h.enf.callList())
			}
		})
	}
}
