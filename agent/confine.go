package agent

import (
	"sync"
	"sync/atomic"
)

// Confinement off the loop. Moving a process into its tree's cgroup writes
// cgroup.procs, which takes the kernel's cgroup threadgroup lock: waits of
// milliseconds, or far longer while many cgroups change at once, and the
// next deadline must not wait behind them. So Confine runs on one worker,
// in the order the loop asks, together with the calls whose order against
// it matters, queued behind it:
//
//   - a held process other than a new tree's root is resumed, and taken
//     off the kernel's hold record, after what was queued before it (a new
//     tree's root is resumed at once, before its own confinement: the
//     kernel records its files and forks from its exec, see newTree);
//   - a member that exits while its confinement is queued is forgotten
//     after it (else the enforcer would keep a pidfd of the dead process);
//   - a tree is cleaned up and released after its confinements (the
//     cleanup needs the filesystem view the first Confine keeps, and a
//     move after the release would make the cgroup again).
//
// Signal and Kill stay on the loop: their outcome is recorded as they are
// decided, and the kill's pidfd part never waits on the kernel. The
// enforcer knows a member only once it is confined, so a signal or kill of
// a tree with a confinement still queued first waits for it: the process
// it moves is then signalled too. That is the loop's only wait here, and
// it is rare (a tree capped at exec, a child forked while its tree is
// being ended, a deadline within a moment of a fork); it is the wait every
// confinement cost before.

// queued is a tree's work on the confinement worker not done yet.
type queued struct {
	wg sync.WaitGroup // the loop waits on it (Add and Wait on the loop only)
	n  atomic.Int32   // how many: read by the loop, lowered by the worker
}

// enqueue runs f on the confinement worker after everything queued before
// it. With t, f counts as t's queued work until it returns.
func (a *Agent) enqueue(t *tree, f func()) {
	a.workers.Add(1)
	if t != nil {
		t.queued.wg.Add(1)
		t.queued.n.Add(1)
	}
	a.confines.run(func() {
		defer a.workers.Done()
		f()
		if t != nil {
			t.queued.n.Add(-1)
			t.queued.wg.Done()
		}
	})
}

// queuedDone waits for everything queued on the confinement worker so far.
func (a *Agent) queuedDone() {
	done := make(chan struct{})
	a.enqueue(nil, func() { close(done) })
	<-done
}

// confine moves m into its tree's cgroup, off the loop; a failure comes
// back to the loop.
func (a *Agent) confine(m *proc) {
	t := m.tree
	name, pid, born, view := t.name, m.PID, m.Born, len(t.rule.Cleanup.Paths) > 0
	a.enqueue(t, func() {
		if err := a.enf.Confine(name, pid, born, view); err != nil {
			// Reported from a goroutine of its own: the worker never
			// waits for the loop, which may be waiting for the worker.
			a.work(func() { a.report(confineFailed{m: m, err: err}) })
		}
	})
}

// confineFailed is a Confine that failed.
type confineFailed struct {
	m   *proc
	err error
}

func (c confineFailed) apply(a *Agent) {
	m, t := c.m, c.m.tree
	if isGone(c.err) {
		// It exited before it could be confined. Its exit and reap events
		// are normally on their way; if none comes (it ended before the
		// kernel tracked it), forget it a little later.
		a.timers.add(timer{at: a.clock.Now() + goneGrace, kind: timerGone, tree: t, pid: m.PID})
		return
	}
	a.m.unconfined.WithLabelValues(t.rule.Name).Inc()
	a.log.Warn("could not move process into its tree cgroup; it will be signalled through its pidfd",
		a.procAttrs(m, "err", c.err)...)
}

// forget drops an exited member from the enforcer: at once, or after its
// tree's queued confinements.
func (a *Agent) forget(t *tree, pid int) {
	if t.queued.n.Load() == 0 {
		a.enf.Forget(t.name, pid)
		return
	}
	name := t.name
	a.enqueue(t, func() { a.enf.Forget(name, pid) })
}

// confined waits until the enforcer knows every member of t the loop has
// confined: before a signal or kill of the tree.
func (t *tree) confined() {
	if t.queued.n.Load() > 0 {
		t.queued.wg.Wait()
	}
}

// killTree sends SIGKILL to t (see Enforcer.Kill) once its members are
// confined, unless the kill thread has sent the one armed (see killer.go).
func (a *Agent) killTree(t *tree) error {
	if o := t.order; o != nil {
		t.order = nil
		if !o.state.CompareAndSwap(orderArmed, orderTaken) && o.state.Load() == orderFired {
			<-o.done
			return o.err
		}
	}
	t.confined()
	return a.killCgroup(t.name)
}

// killCgroup kills tree name through the enforcer. A tree none of whose
// processes the enforcer knows (each exited before its confinement, as a
// short-lived engine capped at exec may) has nothing left to kill.
func (a *Agent) killCgroup(name string) error {
	if err := a.enf.Kill(name); err != nil && !isGone(err) {
		return err
	}
	return nil
}
