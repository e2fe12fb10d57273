package agent

import (
	"time"
)

// enableFiles attaches the file tracepoints, before a tracked process runs
// on. If that fails, the tree is tracked and ended all the same; only what
// it creates is not recorded.
func (a *Agent) enableFiles() {
	if a.filesOn {
		return
	}
	if err := a.src.EnableFiles(); err != nil {
		a.log.Error("attach file tracepoints: created files are not recorded", "err", err)
		return
	}
	a.filesOn = true
	a.m.fileTracing.Set(1)
	a.log.Debug("file tracepoints attached")
}

// filesUnused queues the detaching of the file tracepoints when nothing is
// tracked.
func (a *Agent) filesUnused(now time.Duration) {
	if a.filesOn && !a.filesArmed && !a.filesPinned && !a.filterAll && len(a.trees) == 0 {
		a.filesArmed = true
		a.timers.add(timer{at: now + a.filesIdle, kind: timerFiles})
	}
}

// filesTimer detaches the file tracepoints if nothing was tracked since.
func (a *Agent) filesTimer(now time.Duration) {
	a.filesArmed = false
	if !a.filesOn || a.filesPinned || a.filterAll || len(a.trees) > 0 {
		return
	}
	off, err := a.src.DisableFiles()
	switch {
	case err != nil:
		a.filesPinned = true
		a.log.Warn("file tracepoints stay attached: they cannot be detached safely here", "err", err)
	case !off:
		// The kernel tracks a process the table does not have yet (an
		// exec on its way): later.
		a.filesUnused(now)
	default:
		a.filesOn = false
		a.m.fileTracing.Set(0)
		a.log.Debug("file tracepoints detached: nothing tracked")
	}
}
