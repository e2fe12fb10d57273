package agent

import (
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
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
// first: tree cgroup removals, cleanups; run side by side, they would
// only compete for the same kernel locks and disks.
type serial struct {
	once sync.Once
	jobs chan func()
	// nice, when set, is the niceness of the worker's thread: background
	// work that must not take a CPU from the processes being killed.
	nice int
}

func (s *serial) run(f func()) {
	s.once.Do(func() {
		s.jobs = make(chan func(), 4096)
		go func() {
			if s.nice != 0 {
				// Niceness is a thread's (Linux): the worker keeps its
				// thread, which never goes back to the runtime's pool.
				runtime.LockOSThread()
				_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), s.nice)
			}
			for f := range s.jobs {
				f()
			}
		}()
	})
	s.jobs <- f
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
