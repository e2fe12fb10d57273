package agent

import (
	"sync"
	"time"

	"overtime/collector"
)

// Work off the loop. Whatever touches the node and can wait on it (a
// procfs scan, a cgroup walk or removal, a file removal, a zombie check)
// runs on a worker, never on the event loop: the loop holds the table lock
// for memory work only, so a deadline is never late behind a slow
// filesystem and /metrics never waits for a rescan. A worker hands its
// result back as a result, which the loop applies like an event.

// result is what a worker hands back; apply runs on the loop, with the
// table lock held.
type result interface{ apply(a *Agent) }

// backlog is how many results may wait for the loop before a worker waits.
const backlog = 1024

// work runs f on a goroutine of its own, off the loop.
func (a *Agent) work(f func()) {
	a.workers.Add(1)
	go func() {
		defer a.workers.Done()
		f()
	}()
}

// report hands r to the loop (dropped once the loop has stopped).
func (a *Agent) report(r result) {
	select {
	case a.back <- r:
	case <-a.done:
	}
}

// serial runs jobs one after another on one goroutine, started at the
// first: removals and cleanups, which would only compete for the same
// disk and kernel locks if run side by side.
type serial struct {
	once sync.Once
	jobs chan func()
}

func (s *serial) run(f func()) {
	s.once.Do(func() {
		s.jobs = make(chan func(), 4096)
		go func() {
			for f := range s.jobs {
				f()
			}
		}()
	})
	s.jobs <- f
}

// resynced is a resync's reading of the node: a procfs scan begun at
// scanAt, the tree cgroups left on the node and the undecided candidates.
type resynced struct {
	scanAt                        time.Duration
	procs                         []collector.Process
	adopted                       map[string][]int
	pending                       []int
	scanErr, adoptErr, pendingErr error
}

// resync rescans the node after the kernel dropped events. The scan runs
// on a worker; the loop reads no more events until it is applied, so the
// records read after the loss are applied after the scan, as they came.
func (a *Agent) resync() {
	a.m.resyncs.Inc()
	if a.resyncing {
		a.resyncAgain = true
		return
	}
	a.scanNode()
}

// scanNode starts the resync's reading of the node on a worker.
func (a *Agent) scanNode() {
	a.resyncing = true
	scanAt := a.clock.Now()
	a.work(func() {
		r := resynced{scanAt: scanAt}
		if r.procs, r.scanErr = a.src.Scan(); r.scanErr == nil {
			r.adopted, r.adoptErr = a.enf.Adopt()
			r.pending, r.pendingErr = a.src.Pending()
		}
		a.report(r)
	})
}

func (r resynced) apply(a *Agent) {
	a.resyncing = false
	defer func() {
		if a.resyncAgain {
			a.resyncAgain = false
			a.scanNode()
		}
	}()
	if r.scanErr != nil {
		a.log.Error("resync scan", "err", r.scanErr)
		return
	}
	if r.adoptErr != nil {
		a.log.Error("resync adopt", "err", r.adoptErr)
		r.adopted = nil
	}
	if r.pendingErr != nil {
		a.log.Error("resync: list undecided candidates", "err", r.pendingErr)
	}
	a.reconcile(r.procs, r.adopted, r.scanAt)
	a.settlePending(r.pending, r.procs)
	a.log.Warn("resynced after lost events", "tracked", len(a.procs))
}

// zombieCheck asks whether an exited member whose parent has not reaped
// it after zombieAfter is gone, its reap record lost.
type zombieCheck struct {
	p    *proc
	pid  int
	born time.Duration
}

// zombiesChecked is the answer for each check of a batch.
type zombiesChecked struct {
	checks []zombieCheck
	reaped []bool
}

// checkZombies reads procfs for the members due for a zombie check, in one
// batch on a worker.
func (a *Agent) checkZombies() {
	checks := a.zombieDue
	a.zombieDue = nil
	if len(checks) == 0 {
		return
	}
	a.work(func() {
		z := zombiesChecked{checks: checks, reaped: make([]bool, len(checks))}
		for i, c := range checks {
			z.reaped[i] = a.src.Reaped(c.pid, c.born)
		}
		a.report(z)
	})
}

func (z zombiesChecked) apply(a *Agent) {
	for i, c := range z.checks {
		p := c.p
		if cur, ok := a.procs[c.pid]; !ok || cur != p || !p.exited || p.zombie {
			continue
		}
		if z.reaped[i] {
			// Reaped, and its reap record never came.
			a.log.Debug("reaped without a reap record", a.procAttrs(p)...)
			a.untrack(p.PID)
			a.reaped(p)
			continue
		}
		p.zombie = true
		a.log.Warn("zombie: exited and not reaped by its parent", a.procAttrs(p, "parent", p.PPID)...)
	}
}

// untrack drops pid from the kernel's tracked set.
func (a *Agent) untrack(pid int) {
	if err := a.src.Untrack(pid); err != nil {
		a.log.Debug("untrack", "pid", pid, "err", err)
	}
}
