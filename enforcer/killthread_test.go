package enforcer

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadSched reads a thread's scheduling policy and real-time priority
// from /proc (stat fields 41 and 40).
func threadSched(t *testing.T, tid int) (policy, prio int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	prio, _ = strconv.Atoi(f[40-3])
	policy, _ = strconv.Atoi(f[41-3])
	return policy, prio
}

func bootNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

// The alarm rings on a SCHED_FIFO thread of its own, never before the
// instant it is set to; setting it earlier replaces a later setting; after
// Close it rings no more.
func TestKillThreadRingsOnItsOwnThread(t *testing.T) {
	k, err := NewKillThread()
	if err != nil {
		t.Fatal(err)
	}
	type ring struct {
		tid int
		at  time.Duration
	}
	rings := make(chan ring, 16)
	pol := k.Start(1, func() { rings <- ring{unix.Gettid(), bootNow()} })
	if pol.Policy != "SCHED_FIFO" || pol.Priority != 1 || pol.Why != nil {
		t.Fatalf("policy %+v, want SCHED_FIFO 1 as root", pol)
	}
	at := bootNow() + 30*time.Millisecond
	if err := k.Set(at); err != nil {
		t.Fatal(err)
	}
	var r ring
	select {
	case r = <-rings:
	case <-time.After(10 * time.Second):
		t.Fatal("the alarm never rang")
	}
	if r.at < at {
		t.Fatalf("rang %v before the instant it was set to", at-r.at)
	}
	if r.tid == unix.Gettid() {
		t.Fatal("rang on the test's thread")
	}
	if policy, prio := threadSched(t, r.tid); policy != unix.SCHED_FIFO || prio != 1 {
		t.Fatalf("ring thread policy %d priority %d, want SCHED_FIFO (1) priority 1", policy, prio)
	}
	// An hour away, then a moment away: the moment wins.
	if err := k.Set(bootNow() + time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := k.Set(bootNow() + 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	select {
	case r2 := <-rings:
		if r2.tid != r.tid {
			t.Fatalf("rang on thread %d, then %d: not a thread of its own", r.tid, r2.tid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an earlier setting did not replace the later one")
	}
	if err := k.Set(bootNow() + 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rings:
		t.Fatal("rang after Close")
	case <-time.After(200 * time.Millisecond):
	}
	// The thread ends with its goroutine, a moment after Close.
	task := fmt.Sprintf("/proc/self/task/%d", r.tid)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the real-time thread %d (pid %d) outlives Close by 5s", r.tid, os.Getpid())
		}
	}
}

// Priority 0 keeps the normal policy.
func TestKillThreadPriorityZero(t *testing.T) {
	k, err := NewKillThread()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	tids := make(chan int, 1)
	pol := k.Start(0, func() { tids <- unix.Gettid() })
	if pol.Policy != "SCHED_OTHER" || pol.Why != nil {
		t.Fatalf("policy %+v, want SCHED_OTHER", pol)
	}
	if err := k.Set(1); err != nil {
		t.Fatal(err)
	}
	if policy, _ := threadSched(t, <-tids); policy != unix.SCHED_NORMAL {
		t.Fatalf("policy %d, want SCHED_OTHER", policy)
	}
}

// Without CAP_SYS_NICE the agent raises RLIMIT_RTPRIO (CAP_SYS_RESOURCE)
// and gets SCHED_FIFO; without either it runs at the normal policy and
// says why.
func TestKillThreadWithoutCapSysNice(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_RTPRIO, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur > 0 {
		t.Fatalf("RLIMIT_RTPRIO is %d here: this test needs it 0 to see the raise", lim.Cur)
	}
	t.Cleanup(func() {
		if err := unix.Setrlimit(unix.RLIMIT_RTPRIO, &lim); err != nil {
			t.Errorf("restore RLIMIT_RTPRIO: %v", err)
		}
	})
	// Each on a thread that ends with it: a real-time thread must not go
	// back to the runtime's pool.
	onOwnThread := func(caps ...int) (pol ThreadPolicy, policy int) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread()
			withoutCaps(t, func() {
				pol = setRealtime(1)
				policy, _ = threadSched(t, unix.Gettid())
			}, caps...)
		}()
		<-done
		return pol, policy
	}
	pol, policy := onOwnThread(unix.CAP_SYS_NICE, unix.CAP_SYS_RESOURCE)
	if pol.Policy != "SCHED_OTHER" || pol.Why == nil || !strings.Contains(pol.Why.Error(), "CAP_SYS_NICE") || policy != unix.SCHED_NORMAL {
		t.Fatalf("without CAP_SYS_NICE and CAP_SYS_RESOURCE: %+v, thread policy %d; want SCHED_OTHER and why", pol, policy)
	}
	// The raise needs CAP_SYS_RESOURCE in the permitted set (some
	// sandboxes leave it out of the bounding set; the VM guests have it).
	pol, policy = onOwnThread(unix.CAP_SYS_NICE)
	if !permitted(t, unix.CAP_SYS_RESOURCE) {
		if pol.Policy != "SCHED_OTHER" || pol.Why == nil || policy != unix.SCHED_NORMAL {
			t.Fatalf("without CAP_SYS_NICE, CAP_SYS_RESOURCE not permitted: %+v, thread policy %d; want SCHED_OTHER and why", pol, policy)
		}
		t.Log("CAP_SYS_RESOURCE is not permitted here: the RLIMIT_RTPRIO raise was refused, as it should be")
		return
	}
	if pol.Policy != "SCHED_FIFO" || pol.Why != nil || policy != unix.SCHED_FIFO {
		t.Fatalf("without CAP_SYS_NICE: %+v, thread policy %d; want SCHED_FIFO through RLIMIT_RTPRIO", pol, policy)
	}
	var now unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_RTPRIO, &now); err != nil || now.Cur != 1 {
		t.Fatalf("RLIMIT_RTPRIO after the raise: %+v %v, want 1", now, err)
	}
}

// permitted reports whether capability c is in this thread's permitted set.
func permitted(t *testing.T, c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return data[c/32].Permitted&(1<<(c%32)) != 0
}
