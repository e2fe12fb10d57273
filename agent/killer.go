package agent

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"
)

// The kill thread. A SIGKILL due at a deadline must not wait for the loop:
// on a busy node the loop may be decoding a burst of events, or waiting
// for a CPU among the node's own work, when the deadline comes. So when
// the loop sets a tree's SIGKILL (at its deadline, for a rule whose signal
// is SIGKILL; at deadline + grace, once it has sent the rule's signal), it
// also arms an order for the kill thread: an alarm on a thread of its own,
// at a real-time priority where the agent may set one (KillAlarm). When the
// alarm rings, the thread sends the SIGKILL itself, through the enforcer,
// which is safe to call from any goroutine.
//
// The loop still decides and records: its own timer runs as before, and it
// takes the order when it gets there first; when the thread got there
// first, the loop uses the thread's outcome and records the kill as its
// own (at its timer, or when the tree's end comes before it). An order is
// the thread's or the loop's, never both: whoever moves it out of armed
// does it. The thread leaves to the loop:
//
//   - a tree with confinements still queued (see confine.go): the loop
//     waits for them before it kills, so the process being moved dies too;
//   - everything in monitor mode, and after the loop has stopped.

// KillAlarm rings the kill thread at an instant of the boot-time clock
// (see enforcer.KillThread).
type KillAlarm interface {
	// Set makes it ring at at, replacing what it was set to.
	Set(at time.Duration) error
}

// order states.
const (
	orderArmed int32 = iota
	orderFired       // the kill thread took it
	orderTaken       // the loop took it, or dropped it
)

// killOrder is one SIGKILL armed for the kill thread.
type killOrder struct {
	name   string
	at     time.Duration
	kind   timerKind     // the loop's timer for the same kill
	queued *atomic.Int32 // the tree's queued confinements
	state  atomic.Int32
	// Set by the thread before done is closed.
	done    chan struct{}
	firedAt time.Duration
	err     error
}

// killer is the kill thread's side: the armed orders, earliest first.
type killer struct {
	alarm KillAlarm
	kill  func(tree string) error
	now   func() time.Duration
	on    atomic.Bool // enforce mode, loop running

	mu      sync.Mutex
	orders  orderHeap
	setAt   time.Duration // what the alarm is set to (0: not set)
	firing  sync.WaitGroup
	stopped bool
}

// arm adds o, setting the alarm earlier if o comes first.
func (k *killer) arm(o *killOrder) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	heap.Push(&k.orders, o)
	if k.setAt == 0 || o.at < k.setAt {
		k.setAt = o.at
		// On failure the loop's own timer sends the kill.
		_ = k.alarm.Set(o.at)
	}
}

// ring runs on the kill thread when the alarm rings: it sends every order
// that is due, then sets the alarm for the next.
func (k *killer) ring() {
	for {
		now := k.now()
		k.mu.Lock()
		if k.stopped || len(k.orders) == 0 {
			k.setAt = 0
			k.mu.Unlock()
			return
		}
		o := k.orders[0]
		if o.at > now {
			k.setAt = o.at
			_ = k.alarm.Set(o.at)
			k.mu.Unlock()
			return
		}
		heap.Pop(&k.orders)
		fire := k.on.Load() && o.queued.Load() == 0 && o.state.CompareAndSwap(orderArmed, orderFired)
		if fire {
			k.firing.Add(1)
		}
		k.mu.Unlock()
		if fire {
			o.firedAt = now
			o.err = k.kill(o.name)
			close(o.done)
			k.firing.Done()
		}
	}
}

// stop ends the thread's kills: none starts after it returns.
func (k *killer) stop() {
	k.on.Store(false)
	k.mu.Lock()
	k.stopped = true
	k.orders = nil
	k.mu.Unlock()
	k.firing.Wait()
}

// KillsDue is the kill thread's work when its alarm rings (see
// Options.KillAlarm).
func (a *Agent) KillsDue() {
	if a.killer != nil {
		a.killer.ring()
	}
}

// killsOn lets the kill thread send kills in enforce mode only.
func (a *Agent) killsOn() {
	if a.killer != nil {
		a.killer.on.Store(!a.monitor())
	}
}

// armKill arms t's SIGKILL at at for the kill thread, replacing an earlier
// order; kind is the loop's timer for it.
func (a *Agent) armKill(t *tree, at time.Duration, kind timerKind) {
	if a.killer == nil || a.monitor() {
		return
	}
	if o := t.order; o != nil && !o.state.CompareAndSwap(orderArmed, orderTaken) {
		return // the thread has sent the one armed: the kill is under way
	}
	o := &killOrder{name: t.name, at: at, kind: kind, queued: &t.queued.n, done: make(chan struct{})}
	t.order = o
	a.killer.arm(o)
}

// dropKill takes t's order back from the kill thread, if it has not fired.
func (a *Agent) dropKill(t *tree) {
	if o := t.order; o != nil && o.state.CompareAndSwap(orderArmed, orderTaken) {
		t.order = nil
	}
}

// fired returns t's order if the kill thread has sent it; the loop has
// not recorded it yet.
func (t *tree) fired() *killOrder {
	if o := t.order; o != nil && o.state.Load() == orderFired {
		<-o.done
		return o
	}
	return nil
}

// settleKill records, before t's end, a kill the thread sent that the
// loop's timer has not reached yet.
func (a *Agent) settleKill(t *tree) {
	if o := t.fired(); o != nil {
		a.fire(timer{at: o.at, kind: o.kind, tree: t}, o.firedAt)
	}
}

// orderHeap is a min-heap of orders on their time.
type orderHeap []*killOrder

func (h orderHeap) Len() int           { return len(h) }
func (h orderHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h orderHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *orderHeap) Push(x any)        { *h = append(*h, x.(*killOrder)) }
func (h *orderHeap) Pop() any {
	old := *h
	n := len(old)
	o := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return o
}
