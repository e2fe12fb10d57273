package agent

import (
	"overtime/internal/node"
)

// handle applies one event to the table.
func (a *Agent) handle(ev node.Event) {
	if a.scanned != nil && ev.Time > a.scanAt+staleWindow {
		a.scanned = nil
	}
	switch ev.Type {
	case node.EventExec, node.EventFork, node.EventExit, node.EventFile:
		a.m.events.WithLabelValues(ev.Type.String()).Inc()
	}
	switch ev.Type {
	case node.EventExec:
		a.onExec(ev)
	case node.EventFork:
		a.onFork(ev)
	case node.EventExit:
		if p, ok := a.member(ev); ok && !p.exited {
			a.memberExited(p, ev.Time, ev.ExitCode)
		}
	case node.EventReap:
		if p, ok := a.member(ev); ok {
			if !p.exited {
				a.memberExited(p, ev.Time, ev.ExitCode)
			}
			a.reaped(p)
		}
	case node.EventFile:
		a.onFile(ev)
	case node.EventLost:
		a.m.lost.Add(float64(ev.Lost))
		a.resync()
	case node.EventOrphan:
		if p, ok := a.procs[ev.PID]; ok && !p.exited && !p.orphaned {
			a.markOrphan(p)
		}
	}
}

// member finds the tracked process an exit or reap record is about; a
// record of an earlier process with the same PID (read after a resync
// found its successor) is not.
func (a *Agent) member(ev node.Event) (*proc, bool) {
	p, ok := a.procs[ev.PID]
	if !ok || (ev.Born != 0 && !node.SameBorn(ev.Born, p.Born)) {
		return nil, false
	}
	return p, true
}

func (a *Agent) onExec(ev node.Event) {
	if ev.Proc == nil {
		return
	}
	p := *ev.Proc
	// The kernel stopped the new process at exec (a comm of a rule with
	// max_running, or file tracing was off): whatever is decided below, it
	// runs on unless it is ended at its cap. (The kernel never holds a
	// process it tracks, so a member's own exec is not held.) A new tree
	// resumes its root itself, as soon as its files are recorded.
	held := p.Held
	if held {
		defer func() {
			if held {
				a.resumeHeld(p.PID, p.Born)
			}
		}()
	}
	stale := a.stale(ev.Time)
	if m, ok := a.procs[p.PID]; ok && node.SameBorn(m.Born, p.Born) {
		// A member executed another program: it stays in its tree, with the
		// tree's rule and deadline. A record older than the last scan
		// changes nothing: the scan read what it runs later.
		if !m.exited && !stale {
			m.Comm, m.Args, m.Exe = p.Comm, p.Args, p.Exe
		}
		return
	}
	if born, seen := a.scanned[p.PID]; stale && seen && node.SameBorn(born, p.Born) {
		// The last scan saw this process after this exec and matched what
		// it ran then: no rule, or it would be in the table.
		a.untrack(p.PID)
		return
	}
	if m, ok := a.procs[p.PID]; ok {
		// The PID was reaped and reused before we saw the reap.
		if !m.exited {
			a.memberExited(m, ev.Time, m.status)
		}
		a.reaped(m)
	}
	if parent, ok := a.procs[p.PPID]; ok && !parent.exited {
		// A child whose fork we did not see (it was forked before its
		// parent was tracked): it belongs to its parent's tree.
		a.addMember(parent.tree, p)
		return
	}
	if p.PID == a.self {
		return
	}
	r := firstMatch(a.cfg.Rules, &p)
	if r == nil {
		a.untrack(p.PID)
		return
	}
	if a.newTree(r, p, true) {
		held = false
	}
}

func (a *Agent) onFork(ev node.Event) {
	parent, ok := a.procs[ev.PPID]
	if !ok || parent.exited {
		a.untrack(ev.PID)
		return
	}
	if old, ok := a.procs[ev.PID]; ok {
		if node.SameBorn(old.Born, ev.Born) {
			// Known already: a record read after the scan that found it.
			return
		}
		// The PID was reaped and reused before we saw the reap.
		if !old.exited {
			a.memberExited(old, ev.Time, old.status)
		}
		a.reaped(old)
	}
	p := parent.Process
	p.PID, p.PPID, p.Born, p.Start = ev.PID, ev.PPID, ev.Born, ev.Time
	a.addMember(parent.tree, p)
}
