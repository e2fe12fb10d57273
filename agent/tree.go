package agent

import (
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/node"
)

func (a *Agent) makeTree(name string, r *Rule, rootPID int, start time.Duration) *tree {
	a.enableFiles()
	t := &tree{
		name:     name,
		rule:     r,
		rootPID:  rootPID,
		start:    start,
		deadline: start + r.Timeout,
		killAt:   start + r.Timeout + r.Kill.Grace,
		members:  map[int]*proc{},
		created:  map[string]*created{},
		opened:   map[string]bool{},
	}
	a.trees[name] = t
	a.timers.add(timer{at: t.deadline, kind: timerDeadline, tree: t})
	if r.Kill.Signal == unix.SIGKILL {
		a.armKill(t, t.deadline, timerDeadline)
	}
	a.watchProgress(t, a.clock.Now())
	return t
}

// newTree starts tracking a process that matched rule r at exec (atExec)
// or in a scan. Past its rule's max_running, a process that has just
// executed is ended at once; one found running is only counted. It
// reports whether it resumed p, held at exec (see below); if not, the
// caller decides on the hold.
func (a *Agent) newTree(r *Rule, p node.Process, atExec bool) (resumed bool) {
	if !a.roomFor(p.PID) {
		return false
	}
	capped := atExec && r.MaxRunning > 0 && a.running[r.Name] >= r.MaxRunning
	t := a.makeTree(treeName(r.Name, p.PID, p.Start), r, p.PID, p.Start)
	if p.Held && !capped {
		// The file programs are attached (makeTree) and the kernel has
		// tracked the candidate since its exec, so every file change it
		// makes from here is recorded: it waits for nothing else. Moving
		// it into its tree's cgroup (a cgroup migration: milliseconds,
		// more under the cgroup lock) follows while it runs; a child it
		// forks meanwhile is tracked by the kernel and confined when its
		// fork is read, as every member is.
		a.resume(p.PID, p.Born, true)
		resumed = true
	}
	m := a.join(t, p)
	if capped {
		a.capTree(t, m)
		return resumed
	}
	t.counted = true
	a.running[r.Name]++
	a.log.Info("tracking", a.procAttrs(m, "deadline_in", (t.deadline-a.clock.Now()).String())...)
	// The caller that started it: when it goes away first, the engine is
	// an orphan, the leak this agent exists for.
	if err := a.src.WatchParent(p.PID, p.PPID); err != nil {
		a.log.Debug("watch parent", "pid", p.PID, "ppid", p.PPID, "err", err)
	}
	return resumed
}

// addMember adds a process forked by a member of t.
func (a *Agent) addMember(t *tree, p node.Process) {
	if !a.roomFor(p.PID) {
		return
	}
	a.join(t, p)
	// A child born while its tree is being ended is ended with it.
	if t.killed && !a.monitor() {
		if err := a.killTree(t); err != nil {
			a.log.Error("kill late member", "rule", t.rule.Name, "pid", p.PID, "err", err)
		}
	}
}

func (a *Agent) roomFor(pid int) bool {
	if len(a.procs) < a.cfg.Limits.MaxTracked {
		return true
	}
	a.m.limitHits.WithLabelValues("max_tracked_processes").Inc()
	a.log.Warn("not tracking: max_tracked_processes reached", "pid", pid, "limit", a.cfg.Limits.MaxTracked)
	a.untrack(pid)
	return false
}

// join puts p in t: in the table, in the kernel's tracked set and (off the
// loop, see confine.go) in t's cgroup.
func (a *Agent) join(t *tree, p node.Process) *proc {
	m := &proc{Process: p, tree: t}
	m.podUID, m.containerID = node.ParsePod(p.Cgroup)
	t.members[p.PID] = m
	t.live++
	a.procs[p.PID] = m
	if err := a.src.Track(p.PID); err != nil {
		a.log.Warn("track in kernel", "pid", p.PID, "err", err)
	}
	a.confine(m)
	return m
}

// memberExited records that every thread of p has exited.
func (a *Agent) memberExited(p *proc, at time.Duration, status int) {
	p.exited, p.exitAt, p.status = true, at, status
	t := p.tree
	a.forget(t, p.PID)
	t.live--
	if p.PID == t.rootPID {
		t.rootStatus = status
	}
	// Children of p that still run are orphans now.
	for _, c := range t.members {
		if c.PPID == p.PID && !c.exited && !c.orphaned {
			a.markOrphan(c)
		}
	}
	a.timers.add(timer{at: at + zombieAfter, kind: timerZombie, tree: t, pid: p.PID})
	if t.live == 0 {
		a.endTree(t, at)
	}
}

func (a *Agent) markOrphan(c *proc) {
	c.orphaned = true
	a.log.Warn("orphaned: the process that started it exited", a.procAttrs(c)...)
}

// reaped drops a process whose parent waited for it (or that is gone).
func (a *Agent) reaped(p *proc) {
	t := p.tree
	if cur, ok := a.procs[p.PID]; ok && cur == p {
		delete(a.procs, p.PID)
	}
	delete(t.members, p.PID)
	if len(t.members) == 0 && t.ended {
		a.dropTree(t)
	}
}

// dropTree removes t from the table.
func (a *Agent) dropTree(t *tree) {
	if a.trees[t.name] == t {
		delete(a.trees, t.name)
	}
	a.filesUnused(a.clock.Now())
}

// endTree runs when the last member of t has exited.
func (a *Agent) endTree(t *tree, at time.Duration) {
	a.settleKill(t)
	a.dropKill(t)
	t.ended = true
	if t.counted {
		a.running[t.rule.Name]--
	}
	outcome := "exited"
	switch {
	case t.signalled || t.killed:
		outcome = "killed"
	case t.rootStatus != 0:
		outcome = "failed"
	}
	runtime := at - t.start
	a.m.runtime.WithLabelValues(t.rule.Name, outcome).Observe(runtime.Seconds())
	attrs := []any{"outcome", outcome, "tree_cgroup", t.name}
	if t.killed && at >= t.killAt {
		lat := at - t.killAt
		a.m.killLatency.WithLabelValues(t.rule.Name).Observe(lat.Seconds())
		a.record(t, t.rootPID, "kill", "confirmed", "tree gone "+lat.String()+" after deadline + grace")
		attrs = append(attrs, "kill_latency", lat.String())
	}
	a.log.Info("tree ended", a.rootAttrs(t, attrs...)...)
	if cleanupApplies(t.rule.Cleanup.When, outcome) {
		a.cleanup(t) // then the release
	} else {
		a.release(t)
	}
	if len(t.members) == 0 {
		a.dropTree(t)
	}
}

func cleanupApplies(when []string, outcome string) bool {
	for _, w := range when {
		switch {
		case w == "always",
			w == "killed" && outcome == "killed",
			w == "failed" && (outcome == "failed" || outcome == "killed"):
			return true
		}
	}
	return false
}
