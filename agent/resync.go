package agent

import (
	"time"

	"overtime/internal/node"
)

// resynced is a resync's reading of the node: a procfs scan begun at
// scanAt, the tree cgroups left on the node and the undecided candidates.
type resynced struct {
	scanAt                        time.Duration
	procs                         []node.Process
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

// settlePending decides the exec candidates whose records were lost. Any
// may have been stopped by the kernel at exec (a held comm, or file tracing
// was off), so each one alive is resumed (SIGCONT) unless it is ended at
// its cap; those no tree has are dropped from the kernel's tracked set.
func (a *Agent) settlePending(pending []int, scan []node.Process) {
	comm := make(map[int]*node.Process, len(scan))
	for i := range scan {
		comm[scan[i].PID] = &scan[i]
	}
	for _, pid := range pending {
		if s, alive := comm[pid]; alive && !s.Zombie {
			a.resumeHeld(pid, s.Born)
		}
		if _, tracked := a.procs[pid]; !tracked {
			a.untrack(pid)
		}
	}
}

// resumeHeld continues a process the kernel stopped at exec, unless it is
// being ended at its rule's cap: on the confinement worker, after its
// confinement (see confine.go).
func (a *Agent) resumeHeld(pid int, born time.Duration) {
	m, ok := a.procs[pid]
	cont := !ok || !m.tree.capped || a.monitor()
	a.enqueue(nil, func() { a.resume(pid, born, cont) })
}

// resume continues pid (when cont) and takes it off the kernel's hold
// record, decided either way, so the guard leaves it alone. A new tree's
// root is resumed this way at once, before its confinement (newTree).
func (a *Agent) resume(pid int, born time.Duration, cont bool) {
	if cont {
		if err := a.enf.Resume(pid, born); err != nil {
			a.log.Debug("resume held process", "pid", pid, "err", err)
		}
	}
	if err := a.src.HoldDone(pid); err != nil {
		a.log.Debug("hold record", "pid", pid, "err", err)
	}
}
