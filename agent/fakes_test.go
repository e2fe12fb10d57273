package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"overtime/internal/node"
)

// fakeClock is a boot-time clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *fakeClock) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(d time.Duration) {
	c.mu.Lock()
	c.now = d
	c.mu.Unlock()
}

// fakeSource is a Source fed by the test.
type fakeSource struct {
	mu       sync.Mutex
	scan     []node.Process
	tracked  map[int]bool
	comms    []string
	all      bool
	open     map[int][]string
	events   chan node.Event
	scanned  int
	filterEr error
	parents  map[int]int
	hold     []string
	pending  []int
	filesOn  bool
	filesLog []string // "on", "off", "busy"
	tracking bool     // DisableFiles answers busy: the kernel tracks a process
	// reapedPIDs are gone from procfs (Reaped).
	reapedPIDs map[int]bool
	skipped    uint64 // ScanSkipped
	holdsDone  []int  // HoldDone calls, in order
}

func newFakeSource() *fakeSource {
	return &fakeSource{tracked: map[int]bool{}, open: map[int][]string{}, events: make(chan node.Event, 64)}
}

func (s *fakeSource) Run(ctx context.Context, out chan<- node.Event) error {
	defer close(out)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-s.events:
			out <- ev
		}
	}
}

func (s *fakeSource) Scan() ([]node.Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scanned++
	return append([]node.Process(nil), s.scan...), nil
}

func (s *fakeSource) SetFilter(comms []string, all bool, hold []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filterEr != nil {
		return s.filterEr
	}
	s.comms, s.all, s.hold = comms, all, hold
	return nil
}

func (s *fakeSource) Track(pid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tracked[pid] = true
	return nil
}

func (s *fakeSource) Untrack(pid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tracked, pid)
	return nil
}

func (s *fakeSource) trackedNow() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for pid := range s.tracked {
		out = append(out, pid)
	}
	return out
}

func (s *fakeSource) EnableFiles() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.filesOn {
		s.filesOn = true
		s.filesLog = append(s.filesLog, "on")
	}
	return nil
}

func (s *fakeSource) DisableFiles() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tracking {
		s.filesLog = append(s.filesLog, "busy")
		return false, nil
	}
	if s.filesOn {
		s.filesOn = false
		s.filesLog = append(s.filesLog, "off")
	}
	return true, nil
}

func (s *fakeSource) FilesEnabled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.filesOn
}

func (s *fakeSource) HoldDone(pid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdsDone = append(s.holdsDone, pid)
	return nil
}

func (s *fakeSource) HoldsExpired() uint64 { return 0 }

func (s *fakeSource) Pending() ([]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending, nil
}

func (s *fakeSource) WatchParent(child, parent int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parents == nil {
		s.parents = map[int]int{}
	}
	s.parents[child] = parent
	return nil
}

func (s *fakeSource) ScanSkipped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped
}

func (s *fakeSource) Reaped(pid int, born time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reapedPIDs[pid]
}

func (s *fakeSource) OpenFiles(pid int) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[pid], nil
}

// fakeEnforcer records what the agent asked of it.
type fakeEnforcer struct {
	mu       sync.Mutex
	calls    []string
	members  map[string]map[int]bool
	adopt    map[string][]int
	gone     map[int]bool // Confine says these are gone
	removeFn func(path string) (int64, string, error)
	busy     int           // Release answers busy this many times
	gate     chan struct{} // when set, Confine waits for it to close (the kernel's cgroup lock)
	src      *fakeSource
}

type goneErr struct{}

func (goneErr) Error() string { return "process gone" }
func (goneErr) Gone() bool    { return true }

func newFakeEnforcer() *fakeEnforcer {
	return &fakeEnforcer{members: map[string]map[int]bool{}, gone: map[int]bool{}}
}

func (e *fakeEnforcer) log(format string, args ...any) {
	e.calls = append(e.calls, fmt.Sprintf(format, args...))
}

func (e *fakeEnforcer) Confine(tree string, pid int, born time.Duration, view bool) error {
	e.mu.Lock()
	gate := e.gate
	e.mu.Unlock()
	if gate != nil {
		<-gate
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone[pid] {
		return fmt.Errorf("confine %d: %w", pid, goneErr{})
	}
	if e.members[tree] == nil {
		e.members[tree] = map[int]bool{}
	}
	e.members[tree][pid] = true
	e.log("confine %s %d", tree, pid)
	return nil
}

func (e *fakeEnforcer) Resume(pid int, born time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.src != nil && slices.Contains(e.src.trackedNow(), pid) && !e.src.FilesEnabled() {
		e.log("resume %d before file tracing", pid) // no test wants this
		return nil
	}
	e.log("resume %d", pid)
	return nil
}

func (e *fakeEnforcer) Forget(tree string, pid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.members[tree], pid)
}

func (e *fakeEnforcer) Signal(tree string, sig syscall.Signal) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log("signal %s %d", tree, sig)
	return len(e.members[tree]), nil
}

func (e *fakeEnforcer) Kill(tree string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log("kill %s", tree)
	if e.members[tree] == nil {
		// As the enforcer: no member was ever confined.
		return fmt.Errorf("kill %s: unknown tree: %w", tree, goneErr{})
	}
	return nil
}

func (e *fakeEnforcer) ForceUnmount(pid int, born time.Duration, mountPoint string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log("unmount %d %s", pid, mountPoint)
	return nil
}

type busyErr struct{}

func (busyErr) Error() string { return "cgroup busy" }
func (busyErr) Busy() bool    { return true }

func (e *fakeEnforcer) Release(tree string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log("release %s", tree)
	if e.busy > 0 {
		e.busy--
		return busyErr{}
	}
	delete(e.members, tree)
	return nil
}

func (e *fakeEnforcer) Adopt() (map[string][]int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.adopt, nil
}

func (e *fakeEnforcer) Remove(tree, path string, dev, ino uint64, dryRun bool) (int64, string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log("remove %s dry=%v", path, dryRun)
	if e.removeFn != nil {
		return e.removeFn(path)
	}
	return 10, "", nil
}

func (e *fakeEnforcer) count(prefix string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.calls {
		if len(c) >= len(prefix) && c[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

func (e *fakeEnforcer) callList() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.calls...)
}

// fakeProgress is a Progress whose counters the test sets.
type fakeProgress struct {
	mu      sync.Mutex
	usage   map[int]node.Usage // by pid; a pid absent is gone
	passes  [][]int            // the pids of each Sample call
	blocked map[int]node.Blocked
}

func newFakeProgress() *fakeProgress {
	return &fakeProgress{usage: map[int]node.Usage{}, blocked: map[int]node.Blocked{}}
}

func (f *fakeProgress) Sample(members []node.Member) []node.Usage {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int
	var out []node.Usage
	for _, m := range members {
		pids = append(pids, m.PID)
		if u, ok := f.usage[m.PID]; ok {
			u.PID, u.Born = m.PID, m.Born
			out = append(out, u)
		}
	}
	sort.Ints(pids)
	f.passes = append(f.passes, pids)
	return out
}

// errGone is what Diagnose says of a process it does not know: gone.
var errGone = errors.New("process gone")

func (f *fakeProgress) Diagnose(pid int, born time.Duration) (node.Blocked, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blocked[pid]
	if !ok {
		return b, errGone
	}
	return b, nil
}

// set gives pid's cumulative counters.
func (f *fakeProgress) set(pid int, io uint64, cpu time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.usage[pid] = node.Usage{IO: io, CPU: cpu}
}

// add moves pid's counters on.
func (f *fakeProgress) add(pid int, io uint64, cpu time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.usage[pid]
	u.IO += io
	u.CPU += cpu
	f.usage[pid] = u
}

// wake counts n read or write calls of size bytes each for pid.
func (f *fakeProgress) wake(pid int, n, size uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.usage[pid]
	u.IO += n * size
	u.Calls += n
	f.usage[pid] = u
}

func (f *fakeProgress) passCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.passes)
}

// harness is an agent driven step by step: events and clock by the test.
type harness struct {
	t     *testing.T
	a     *Agent
	src   *fakeSource
	enf   *fakeEnforcer
	prog  *fakeProgress
	clock *fakeClock
	reg   *prometheus.Registry
}

func newHarness(t *testing.T, yaml string) *harness {
	t.Helper()
	return newHarnessWith(t, yaml, nil)
}

// newHarnessWith builds the harness's agent with the options set changes.
func newHarnessWith(t *testing.T, yaml string, set func(*Options)) *harness {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	h := &harness{t: t, src: newFakeSource(), enf: newFakeEnforcer(), prog: newFakeProgress(), clock: &fakeClock{now: 1000 * time.Second}, reg: prometheus.NewRegistry()}
	h.enf.src = h.src
	o := Options{Config: cfg, Source: h.src, Enforcer: h.enf, Progress: h.prog, Unmounter: h.enf, Clock: h.clock, Registry: h.reg, Self: 1}
	if set != nil {
		set(&o)
	}
	h.a = New(o)
	return h
}

func (h *harness) start() {
	h.t.Helper()
	if err := h.a.start(); err != nil {
		h.t.Fatalf("start: %v", err)
	}
	h.settle()
}

// at moves the clock to d and runs the timers due; the work they start
// off the loop (progress passes, diagnoses) comes back and is applied, as
// the loop would, at the same instant.
func (h *harness) at(d time.Duration) {
	h.clock.set(d)
	h.a.mu.Lock()
	h.a.tick(d)
	h.a.mu.Unlock()
	h.settle()
	h.a.releasing.Wait()
}

// settle waits for the work off the loop and applies its results.
func (h *harness) settle() {
	for {
		h.a.workers.Wait()
		select {
		case r := <-h.a.back:
			h.a.mu.Lock()
			r.apply(h.a)
			h.a.mu.Unlock()
			continue
		default:
		}
		return
	}
}

// send applies one event, then waits for the work it started off the loop
// (cleanups, resync scans, tree cgroup removals) and applies its results.
func (h *harness) send(ev node.Event) {
	h.a.mu.Lock()
	h.a.handle(ev)
	h.a.mu.Unlock()
	h.settle()
	h.a.releasing.Wait()
}

func (h *harness) exec(pid, ppid int, at time.Duration, comm string, args ...string) {
	h.send(h.execEvent(pid, ppid, at, comm, args...))
}

func (h *harness) execEvent(pid, ppid int, at time.Duration, comm string, args ...string) node.Event {
	return node.Event{Type: node.EventExec, PID: pid, PPID: ppid, Time: at, Born: at,
		Proc: &node.Process{PID: pid, PPID: ppid, Comm: comm, Args: append([]string{comm}, args...),
			Exe: "/usr/bin/" + comm, Cgroup: "/test", Start: at, Born: at, Held: h.src.holds(pid, comm)}}
}

// holds says what the kernel does at exec: a candidate it does not track
// yet is tracked (pending the agent's decision, so its forks and files
// are recorded), and stopped if its comm is held or file tracing is off.
func (s *fakeSource) holds(pid int, comm string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tracked[pid] || !slices.Contains(s.comms, comm) {
		return false
	}
	s.tracked[pid] = true
	return slices.Contains(s.hold, comm) || !s.filesOn
}

func (h *harness) fork(child, parent int, at time.Duration) {
	h.src.mu.Lock()
	if h.src.tracked[parent] {
		h.src.tracked[child] = true // the kernel tracks a tracked process's child
	}
	h.src.mu.Unlock()
	h.send(node.Event{Type: node.EventFork, PID: child, PPID: parent, Time: at, Born: at})
}

func (h *harness) exit(pid int, at time.Duration, status int) {
	h.send(node.Event{Type: node.EventExit, PID: pid, Time: at, ExitCode: status})
}

func (h *harness) reap(pid int, at time.Duration) {
	h.send(node.Event{Type: node.EventReap, PID: pid, Time: at})
}

func (h *harness) states() map[int]State {
	out := map[int]State{}
	for _, p := range h.a.Processes() {
		out[p.PID] = p.State
	}
	return out
}

func (h *harness) pids() []int {
	var out []int
	for _, p := range h.a.Processes() {
		out = append(out, p.PID)
	}
	sort.Ints(out)
	return out
}
