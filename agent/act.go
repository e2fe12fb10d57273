package agent

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// capTree ends a tree at exec because its rule already has max_running
// trees alive on the node.
func (a *Agent) capTree(t *tree, m *proc) {
	r := t.rule
	t.capped = true
	a.m.capped.WithLabelValues(r.Name).Inc()
	why := fmt.Sprintf("max_running %d reached", r.MaxRunning)
	if a.monitor() {
		a.record(t, t.rootPID, "cap", "skipped_monitor", why+": would end it at exec")
		a.log.Warn("capped: would end it at exec (monitor mode)", a.procAttrs(m, "max_running", r.MaxRunning)...)
		return
	}
	err := a.enf.Kill(t.name)
	t.killed = true
	if err != nil {
		a.record(t, t.rootPID, "cap", "error", why+": "+err.Error())
		a.log.Error("capped: kill at exec failed", a.procAttrs(m, "max_running", r.MaxRunning, "err", err)...)
		return
	}
	a.record(t, t.rootPID, "cap", "ok", why+": ended at exec")
	a.log.Warn("capped: ended at exec", a.procAttrs(m, "max_running", r.MaxRunning)...)
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
	a.signal(t, r.Kill.Signal, r.Kill.SignalName, why)
}

// endLabel starts the log messages about ending t.
func endLabel(t *tree) string {
	if t.endStalled {
		return stallReason
	}
	return "overdue"
}

func (a *Agent) signal(t *tree, sig syscall.Signal, name, why string) {
	r := t.rule
	if a.monitor() {
		a.m.kills.WithLabelValues(r.Name, name, "skipped_monitor").Inc()
		a.record(t, t.rootPID, "signal", "skipped_monitor", why+": would send "+name)
		a.log.Warn(endLabel(t)+": would send "+name+" (monitor mode)", a.rootAttrs(t)...)
		return
	}
	n, err := a.enf.Signal(t.name, sig)
	t.signalled = true
	if err != nil {
		a.m.kills.WithLabelValues(r.Name, name, "error").Inc()
		a.record(t, t.rootPID, "signal", "error", err.Error())
		a.log.Error(endLabel(t)+": "+name+" failed", a.rootAttrs(t, "err", err)...)
		return
	}
	a.m.kills.WithLabelValues(r.Name, name, "ok").Inc()
	a.record(t, t.rootPID, "signal", "ok", why+": sent "+name)
	a.log.Warn(endLabel(t)+": sent "+name+" to the tree", a.rootAttrs(t, "processes", n)...)
}

// kill: deadline + grace, the tree is still alive: SIGKILL through its cgroup.
func (a *Agent) kill(t *tree, now time.Duration) {
	r := t.rule
	prefix := ""
	if t.endStalled {
		prefix = stallReason + ": "
	}
	if a.monitor() {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "skipped_monitor").Inc()
		a.record(t, t.rootPID, "kill", "skipped_monitor", prefix+"grace over: would kill the tree")
		a.log.Warn(endLabel(t)+" past grace: would kill the tree (monitor mode)", a.rootAttrs(t)...)
		return
	}
	err := a.enf.Kill(t.name)
	if !t.killed {
		t.killedAt = now
	}
	t.killed = true
	if err != nil {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "error").Inc()
		a.record(t, t.rootPID, "kill", "error", err.Error())
		a.log.Error("kill failed", a.rootAttrs(t, "err", err)...)
	} else {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "ok").Inc()
		a.record(t, t.rootPID, "kill", "ok", prefix+"grace over: SIGKILL to the tree")
		a.log.Warn("killed the tree", a.rootAttrs(t)...)
	}
	a.timers.add(timer{at: now + confirmDelay(0), kind: timerConfirm, tree: t})
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
	if err := a.enf.Kill(t.name); err != nil {
		a.m.kills.WithLabelValues(t.rule.Name, "SIGKILL", "error").Inc()
	}
	if now-t.killedAt >= unkillableAfter {
		a.unkillable(t, now)
	}
	a.timers.add(timer{at: now + confirmDelay(t.confirmTry), kind: timerConfirm, tree: t})
}
