package agent

import (
	"time"
)

// fileTracing is the state of the file tracepoints (see
// Source.EnableFiles): on while a tree is tracked or a rule cannot be
// prefiltered (the kernel cannot hold its candidates), off filesIdle after
// nothing is tracked. Every change of it is below.
type fileTracing struct {
	on     bool // attached
	armed  bool // a timerFiles is queued to detach them
	pinned bool // detaching failed: they stay on
	all    bool // a rule the kernel cannot prefilter: they stay on
	idle   time.Duration
}

// filesStart takes the state the source is in at start.
func (a *Agent) filesStart() {
	if a.files.on {
		a.m.fileTracing.Set(1)
	}
	a.filesUnused(a.clock.Now())
}

// filesFilter applies a new kernel filter: with all, candidates are not
// held at exec, so file tracing stays on.
func (a *Agent) filesFilter(all bool) {
	a.files.all = all
	if all {
		a.enableFiles()
	} else {
		a.filesUnused(a.clock.Now())
	}
}

// enableFiles attaches the file tracepoints, before a tracked process runs
// on. If that fails, the tree is tracked and ended all the same; only what
// it creates is not recorded.
func (a *Agent) enableFiles() {
	if a.files.on {
		return
	}
	if err := a.src.EnableFiles(); err != nil {
		a.log.Error("attach file tracepoints: created files are not recorded", "err", err)
		return
	}
	a.files.on = true
	a.m.fileTracing.Set(1)
	a.log.Debug("file tracepoints attached")
}

// filesNeeded reports whether the file tracepoints must stay attached.
func (a *Agent) filesNeeded() bool {
	return a.files.pinned || a.files.all || len(a.trees) > 0
}

// filesUnused queues the detaching of the file tracepoints when nothing is
// tracked.
func (a *Agent) filesUnused(now time.Duration) {
	if a.files.on && !a.files.armed && !a.filesNeeded() {
		a.files.armed = true
		a.timers.add(timer{at: now + a.files.idle, kind: timerFiles})
	}
}

// filesTimer detaches the file tracepoints if nothing was tracked since.
func (a *Agent) filesTimer(now time.Duration) {
	a.files.armed = false
	if !a.files.on || a.filesNeeded() {
		return
	}
	off, err := a.src.DisableFiles()
	switch {
	case err != nil:
		a.files.pinned = true
		a.log.Warn("file tracepoints stay attached: they cannot be detached safely here", "err", err)
	case !off:
		// The kernel tracks a process the table does not have yet (an
		// exec on its way): later.
		a.filesUnused(now)
	default:
		a.files.on = false
		a.m.fileTracing.Set(0)
		a.log.Debug("file tracepoints detached: nothing tracked")
	}
}
