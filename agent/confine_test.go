package agent

import (
	"slices"
	"testing"
	"time"

	"overtime/internal/node"
)

const killRule = `
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: 10s
    kill: {signal: SIGKILL, grace: 0s}
`

// onLoop runs f as the loop would, with the table lock held; it fails the
// test unless f returns within d.
func (h *harness) onLoop(d time.Duration, f func()) {
	h.t.Helper()
	done := h.onLoopAsync(f)
	select {
	case <-done:
	case <-time.After(d):
		h.t.Fatalf("the loop is blocked: calls %v", h.enf.callList())
	}
}

// onLoopAsync starts f as the loop would; the channel closes when it
// returns.
func (h *harness) onLoopAsync(f func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.a.mu.Lock()
		defer h.a.mu.Unlock()
		f()
	}()
	return done
}

// A confinement waits for the kernel's cgroup lock off the loop: events and
// another tree's kill go on meanwhile. A kill decided while its tree's
// confinement is in flight waits for it, so the process being moved is
// killed too, after it is in the tree's cgroup.
func TestConfineOffTheLoop(t *testing.T) {
	h := newHarness(t, killRule)
	h.start()
	h.exec(100, 1, 1000*s, "restic", "backup")
	treeA, treeB := treeName("restic", 100, 1000*s), treeName("restic", 200, 1005*s)
	if !slices.Contains(h.enf.callList(), "confine "+treeA+" 100") {
		t.Fatalf("calls %v, want 100 confined", h.enf.callList())
	}

	gate := make(chan struct{})
	h.enf.mu.Lock()
	h.enf.gate = gate
	h.enf.mu.Unlock()
	// The cgroup lock is held: B's confinement blocks, its exec does not.
	h.clock.set(1005 * s)
	h.onLoop(5*s, func() {
		h.a.handle(h.execEvent(200, 1, 1005*s, "restic", "backup"))
	})
	if _, ok := h.a.procs[200]; !ok {
		t.Fatalf("200 not tracked: %v", h.pids())
	}
	// A's deadline: killed at once, B's confinement still blocked.
	h.clock.set(1010 * s)
	h.onLoop(5*s, func() { h.a.tick(1010 * s) })
	calls := h.enf.callList()
	if !slices.Contains(calls, "kill "+treeA) || slices.Contains(calls, "confine "+treeB+" 200") {
		t.Fatalf("calls %v, want %s killed while 200's confinement is blocked", calls, treeA)
	}
	// B's deadline: its kill waits for its confinement.
	h.clock.set(1015 * s)
	killed := h.onLoopAsync(func() { h.a.tick(1015 * s) })
	select {
	case <-killed:
		t.Fatalf("%s killed before its confinement: calls %v", treeB, h.enf.callList())
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	select {
	case <-killed:
	case <-time.After(5 * s):
		t.Fatalf("kill of %s still waiting after its confinement: calls %v", treeB, h.enf.callList())
	}
	h.settle()
	calls = h.enf.callList()
	ci, ki := slices.Index(calls, "confine "+treeB+" 200"), slices.Index(calls, "kill "+treeB)
	if ci < 0 || ki < ci {
		t.Fatalf("calls %v, want 200 confined, then %s killed", calls, treeB)
	}
}

// At the stop, the candidates the kernel holds are resumed before the
// agent goes, though their resumes queue behind a blocked confinement.
func TestStopResumesHeldBehindConfinements(t *testing.T) {
	h := newHarness(t, killRule)
	h.start()
	gate := make(chan struct{})
	h.enf.mu.Lock()
	h.enf.gate = gate
	h.enf.mu.Unlock()
	h.onLoop(5*s, func() { h.a.handle(h.execEvent(100, 1, 1000*s, "restic", "backup")) })
	h.src.mu.Lock()
	h.src.pending = []int{300}
	h.src.scan = []node.Process{{PID: 300, PPID: 1, Comm: "restic", Args: []string{"restic", "check"}, Start: s, Born: s}}
	h.src.mu.Unlock()
	time.AfterFunc(50*time.Millisecond, func() { close(gate) })
	h.a.shutdown()
	calls := h.enf.callList()
	if ci, ri := slices.Index(calls, "confine "+treeName("restic", 100, 1000*s)+" 100"), slices.Index(calls, "resume 300"); ci < 0 || ri < ci {
		t.Fatalf("calls after the stop %v, want 100 confined, then 300 resumed", calls)
	}
}
