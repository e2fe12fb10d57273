package agent

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// step is one action on a tree and what is said of it at each outcome:
// in monitor mode it is only reported (would); otherwise do acts on the
// node and it is reported failed or done. Every action is recorded in the
// action log and logged; signal names the overtime_kills_total series it
// counts in ("": none).
type step struct {
	action, signal  string
	attrs           []any // log attributes
	would, wouldLog string
	failed, failLog string // the record's reason is failed + the error
	done, doneLog   string
	do              func() ([]any, error) // extra log attributes when done
}

// act runs s on t: monitor, act, error or ok.
func (a *Agent) act(t *tree, s step) {
	count := func(result string) {
		if s.signal != "" {
			a.m.kills.WithLabelValues(t.rule.Name, s.signal, result).Inc()
		}
	}
	if a.monitor() {
		count("skipped_monitor")
		a.record(t, t.rootPID, s.action, "skipped_monitor", s.would)
		a.log.Warn(s.wouldLog, s.attrs...)
		return
	}
	extra, err := s.do()
	if err != nil {
		count("error")
		a.record(t, t.rootPID, s.action, "error", s.failed+err.Error())
		a.log.Error(s.failLog, append(s.attrs, "err", err)...)
		return
	}
	count("ok")
	a.record(t, t.rootPID, s.action, "ok", s.done)
	a.log.Warn(s.doneLog, append(s.attrs, extra...)...)
}

// capTree ends a tree at exec because its rule already has max_running
// trees alive on the node.
func (a *Agent) capTree(t *tree, m *proc) {
	r := t.rule
	t.capped = true
	a.m.capped.WithLabelValues(r.Name).Inc()
	why := fmt.Sprintf("max_running %d reached", r.MaxRunning)
	a.act(t, step{action: "cap", attrs: a.procAttrs(m, "max_running", r.MaxRunning),
		would: why + ": would end it at exec", wouldLog: "capped: would end it at exec (monitor mode)",
		failed: why + ": ", failLog: "capped: kill at exec failed",
		done: why + ": ended at exec", doneLog: "capped: ended at exec",
		do: func() ([]any, error) {
			err := a.killTree(t)
			t.killed = true
			return nil, err
		}})
}

// deadline: the tree is overdue; send the rule's signal to all of it,
// unless it is already being ended (it stalled).
func (a *Agent) deadline(t *tree, now time.Duration) {
	t.overdue = true
	a.m.timeouts.WithLabelValues(t.rule.Name).Inc()
	if t.signalled || t.killed {
		return
	}
	t.endStalled = false
	t.killAt = t.deadline + t.rule.Kill.Grace
	a.end(t, now, "deadline reached")
}

// end ends t, overdue or stalled: the rule's signal now, SIGKILL after the
// grace.
func (a *Agent) end(t *tree, now time.Duration, why string) {
	r := t.rule
	if t.endStalled {
		t.killAt = now + r.Kill.Grace
	}
	if r.Kill.Signal == unix.SIGKILL {
		a.kill(t, now)
		return
	}
	a.timers.add(timer{at: t.killAt, kind: timerKill, tree: t})
	a.armKill(t, t.killAt, timerKill)
	a.signal(t, r.Kill.Signal, r.Kill.SignalName, why)
}

// endLabel starts the log messages about ending t.
func endLabel(t *tree) string {
	if t.endStalled {
		return stallReason
	}
	return "overdue"
}

// signal sends the rule's signal to every member of t.
func (a *Agent) signal(t *tree, sig syscall.Signal, name, why string) {
	a.act(t, step{action: "signal", signal: name, attrs: a.rootAttrs(t),
		would: why + ": would send " + name, wouldLog: endLabel(t) + ": would send " + name + " (monitor mode)",
		failLog: endLabel(t) + ": " + name + " failed",
		done:    why + ": sent " + name, doneLog: endLabel(t) + ": sent " + name + " to the tree",
		do: func() ([]any, error) {
			t.confined()
			n, err := a.enf.Signal(t.name, sig)
			t.signalled = true
			return []any{"processes", n}, err
		}})
}

// kill: deadline + grace, the tree is still alive: SIGKILL through its
// cgroup, then a check that it is gone.
func (a *Agent) kill(t *tree, now time.Duration) {
	prefix := ""
	if t.endStalled {
		prefix = stallReason + ": "
	}
	a.act(t, step{action: "kill", signal: "SIGKILL", attrs: a.rootAttrs(t),
		would: prefix + "grace over: would kill the tree", wouldLog: endLabel(t) + " past grace: would kill the tree (monitor mode)",
		failLog: "kill failed",
		done:    prefix + "grace over: SIGKILL to the tree", doneLog: "killed the tree",
		do: func() ([]any, error) {
			var extra []any
			if o := t.fired(); o != nil {
				extra = []any{"by", "kill thread", "kill_delay", (o.firedAt - o.at).String()}
			}
			err := a.killTree(t)
			if !t.killed {
				t.killedAt = now
			}
			t.killed = true
			a.timers.add(timer{at: now + confirmDelay(0), kind: timerConfirm, tree: t})
			return extra, err
		}})
}

// confirmDelay is how long to wait before checking that a killed tree is
// gone, then again, backing off.
func confirmDelay(try int) time.Duration {
	d := time.Second << try
	if d > 30*time.Second {
		d = 30 * time.Second
	}
	return d
}

// confirm: a killed tree has members still alive: kill again and say so.
func (a *Agent) confirm(t *tree, now time.Duration) {
	t.confirmTry++
	a.record(t, t.rootPID, "kill", "error", "tree still alive after SIGKILL")
	a.log.Error("tree still alive after SIGKILL; killing again", a.rootAttrs(t, "alive", t.live)...)
	if err := a.killTree(t); err != nil {
		a.m.kills.WithLabelValues(t.rule.Name, "SIGKILL", "error").Inc()
	}
	if now-t.killedAt >= unkillableAfter {
		a.unkillable(t, now)
	}
	a.timers.add(timer{at: now + confirmDelay(t.confirmTry), kind: timerConfirm, tree: t})
}
