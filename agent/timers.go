package agent

import (
	"container/heap"
	"time"
)

// timerKind says what a timer is for.
type timerKind uint8

const (
	timerDeadline timerKind = iota // send the rule's signal
	timerKill                      // deadline + grace: SIGKILL through the cgroup
	timerConfirm                   // check that a killed tree is gone
	timerZombie                    // an exited member still unreaped?
	timerGone                      // a member gone at confinement: did its exit come?
	timerFiles                     // nothing tracked for a while: detach the file tracepoints
	timerSample                    // a tree with a stall is due for a progress sample
	timerPass                      // a procfs pass may start (at most one a second)
)

// goneGrace is how long a member found gone at confinement waits for its
// exit event before it is retired without one.
const goneGrace = time.Second

// timer is one entry of the deadline heap. Entries are not removed when a
// tree ends: a popped entry whose tree has ended is skipped (lazy deletion),
// so ending a tree costs nothing here.
type timer struct {
	at   time.Duration
	kind timerKind
	tree *tree
	pid  int // timerZombie
}

// timers is a min-heap on the boot-time clock. The event loop sleeps until
// its first entry: there is no polling, and any number of deadlines due at
// the same instant are handled in one wake-up.
type timers []timer

func (h timers) Len() int           { return len(h) }
func (h timers) Less(i, j int) bool { return h[i].at < h[j].at }
func (h timers) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timers) Push(x any)        { *h = append(*h, x.(timer)) }
func (h *timers) Pop() any {
	old := *h
	n := len(old)
	t := old[n-1]
	old[n-1] = timer{}
	*h = old[:n-1]
	return t
}

func (h *timers) add(t timer) { heap.Push(h, t) }

// next returns when the first timer is due.
func (h timers) next() (time.Duration, bool) {
	if len(h) == 0 {
		return 0, false
	}
	return h[0].at, true
}

// popDue removes and returns the first timer if it is due at now.
func (h *timers) popDue(now time.Duration) (timer, bool) {
	if len(*h) == 0 || (*h)[0].at > now {
		return timer{}, false
	}
	return heap.Pop(h).(timer), true
}

// tick runs every timer due at now, then starts the zombie checks they
// asked for.
func (a *Agent) tick(now time.Duration) {
	for {
		tm, ok := a.timers.popDue(now)
		if !ok {
			a.checkZombies()
			return
		}
		a.fire(tm, now)
	}
}

// fire runs one timer. The timers of a tree's end are skipped once it has
// ended or left the table (lazy deletion); a member's timers once it is no
// longer the process they were set for.
func (a *Agent) fire(tm timer, now time.Duration) {
	t := tm.tree
	switch tm.kind {
	case timerDeadline, timerKill, timerConfirm:
		if t.ended || a.trees[t.name] != t {
			return
		}
	case timerGone, timerZombie:
		p, ok := a.procs[tm.pid]
		if !ok || p.tree != t {
			return
		}
		a.memberTimer(tm.kind, p, now)
		return
	}
	switch tm.kind {
	case timerDeadline:
		a.deadline(t, now)
	case timerKill:
		// (In monitor mode a stalled tree may have resumed since.)
		if !t.endStalled || t.stalled || t.overdue {
			a.kill(t, now)
		}
	case timerConfirm:
		a.confirm(t, now)
	case timerFiles:
		a.filesTimer(now)
	case timerSample:
		a.sampleDue(t, now)
	case timerPass:
		a.passArmed = false
		a.startPass(now)
	}
}

// memberTimer runs a timer set for member p.
func (a *Agent) memberTimer(kind timerKind, p *proc, now time.Duration) {
	switch {
	case kind == timerGone && !p.exited:
		// Gone at confinement, and its exit never came.
		a.memberExited(p, now, 0)
		a.reaped(p)
	case kind == timerZombie && p.exited && !p.zombie:
		a.zombieDue = append(a.zombieDue, zombieCheck{p: p, pid: p.PID, born: p.Born})
	}
}
