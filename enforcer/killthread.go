package enforcer

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// KillThread is an alarm on the boot-time clock whose ring runs on an OS
// thread of its own, at a real-time priority when the agent may set one.
// Deadlines then do not queue behind the agent's other goroutines, nor
// behind the node's CPU-bound tasks: the kernel wakes the thread itself
// (a blocking read of a timerfd), and a SCHED_FIFO thread runs before any
// normal task on its CPU.
type KillThread struct {
	fd              int
	started, closed atomic.Bool
	done            chan struct{}
}

// NewKillThread makes the alarm; Start runs its thread.
func NewKillThread() (*KillThread, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_BOOTTIME, unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	return &KillThread{fd: fd, done: make(chan struct{})}, nil
}

// ThreadPolicy is how the kill thread is scheduled.
type ThreadPolicy struct {
	Policy   string // "SCHED_FIFO" or "SCHED_OTHER"
	Priority int    // the real-time priority (0 for SCHED_OTHER)
	// Why is why it runs at SCHED_OTHER though a priority was asked for.
	Why error
}

// Start starts the thread: it sets its scheduling (priority > 0: SCHED_FIFO
// at that priority, else the normal policy) and calls ring each time the
// alarm rings, until Close. It returns once the thread runs.
func (k *KillThread) Start(priority int, ring func()) ThreadPolicy {
	k.started.Store(true)
	started := make(chan ThreadPolicy, 1)
	go func() {
		// Locked for good: the thread ends with the goroutine and never
		// goes back to the runtime's pool with its priority. The process's
		// main thread cannot end, so the work moves off it: while this
		// goroutine holds it, a new one runs on another thread.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			moved := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				close(moved)
				k.loop(priority, ring, started)
			}()
			<-moved
			runtime.UnlockOSThread()
			return
		}
		k.loop(priority, ring, started)
	}()
	return <-started
}

// loop is the thread's work, on its locked thread.
func (k *KillThread) loop(priority int, ring func(), started chan<- ThreadPolicy) {
	defer close(k.done)
	started <- setRealtime(priority)
	buf := make([]byte, 8)
	for {
		_, err := unix.Read(k.fd, buf)
		if k.closed.Load() {
			return
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Never seen: a timerfd read fails only on a bad buffer.
			time.Sleep(time.Millisecond)
			continue
		}
		if err == nil {
			ring()
		}
	}
}

// setRealtime puts the calling thread under SCHED_FIFO at priority. Without
// CAP_SYS_NICE that is allowed up to RLIMIT_RTPRIO, which the agent raises
// when it may (CAP_SYS_RESOURCE).
func setRealtime(priority int) ThreadPolicy {
	if priority <= 0 {
		return ThreadPolicy{Policy: "SCHED_OTHER"}
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(priority)}
	err := unix.SchedSetAttr(0, attr, 0)
	if errors.Is(err, unix.EPERM) {
		var lim unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_RTPRIO, &lim) == nil && lim.Cur < uint64(priority) {
			lim.Cur, lim.Max = uint64(priority), max(lim.Max, uint64(priority))
			if unix.Setrlimit(unix.RLIMIT_RTPRIO, &lim) == nil {
				err = unix.SchedSetAttr(0, attr, 0)
			}
		}
	}
	if err != nil {
		return ThreadPolicy{Policy: "SCHED_OTHER",
			Why: fmt.Errorf("SCHED_FIFO priority %d: %w (it needs CAP_SYS_NICE or CAP_SYS_RESOURCE, and real-time time in the agent's cgroup where the kernel splits it by cgroup)", priority, err)}
	}
	return ThreadPolicy{Policy: "SCHED_FIFO", Priority: priority}
}

// Set makes the alarm ring at the boot-clock instant at (at once when it
// has passed), replacing what it was set to. Any goroutine may call it.
func (k *KillThread) Set(at time.Duration) error {
	// A zero value would disarm the timer.
	ts := unix.NsecToTimespec(max(int64(at), 1))
	return unix.TimerfdSettime(k.fd, unix.TFD_TIMER_ABSTIME, &unix.ItimerSpec{Value: ts}, nil)
}

// Close stops the thread (after the ring it may be running) and frees the
// alarm.
func (k *KillThread) Close() error {
	if k.closed.Swap(true) {
		return nil
	}
	if k.started.Load() {
		if err := k.Set(1); err != nil {
			return err // the thread may still read the descriptor
		}
		<-k.done
	}
	return unix.Close(k.fd)
}
