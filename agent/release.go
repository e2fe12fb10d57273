package agent

import (
	"errors"
	"time"
)

// release removes a dead tree's cgroup, off the event loop: an rmdir
// waits for the kernel's cgroup lock, milliseconds while many processes
// exit at once, and the next deadline must not wait behind it. The kernel
// reports an exit a moment before it takes the task out of its cgroup, so
// the cgroup may still be busy: then it is tried again, 1 ms later,
// doubling, about 4 s in all.
func (a *Agent) release(t *tree) {
	a.releasing.Add(1)
	// After the tree's confinements (see confine.go).
	a.enqueue(nil, func() { a.releases.run(func() { a.releaseTry(t, 0) }) })
}

// releaseTry makes one attempt and, when the cgroup is busy, schedules the
// next; it marks the release done when it ends either way.
func (a *Agent) releaseTry(t *tree, try int) {
	err := a.enf.Release(t.name)
	switch {
	case err == nil:
	case isBusy(err) && try < releaseTries:
		time.AfterFunc(releaseDelay<<try, func() { a.releaseTry(t, try+1) })
		return
	default:
		a.log.Error("remove tree cgroup", "rule", t.rule.Name, "cgroup", t.name, "err", err)
	}
	a.releasing.Done()
}

// Retries of a busy tree cgroup: 1 ms, doubling, about 4 s in all.
const (
	releaseDelay = time.Millisecond
	releaseTries = 12
)

// isBusy reports whether the enforcer said a tree cgroup still holds tasks
// finishing their exit.
func isBusy(err error) bool {
	var b interface{ Busy() bool }
	return errors.As(err, &b) && b.Busy()
}

// isGone reports whether the enforcer said the process no longer exists.
func isGone(err error) bool {
	var g interface{ Gone() bool }
	return errors.As(err, &g) && g.Gone()
}
