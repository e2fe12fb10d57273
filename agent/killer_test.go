package agent

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"overtime/internal/node"
)

// fakeAlarm records what the kill thread's alarm is set to; the test
// rings it (h.a.KillsDue) as the thread would.
type fakeAlarm struct {
	mu   sync.Mutex
	sets []time.Duration
}

func (f *fakeAlarm) Set(at time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, at)
	return nil
}

func (f *fakeAlarm) last() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sets) == 0 {
		return 0
	}
	return f.sets[len(f.sets)-1]
}

func newKillHarness(t *testing.T, yaml string) (*harness, *fakeAlarm) {
	alarm := &fakeAlarm{}
	h := newHarnessWith(t, yaml, func(o *Options) { o.KillAlarm = alarm })
	h.start()
	h.a.killsOn()
	return h, alarm
}

const termRule = `
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: 10s
    kill: {signal: SIGTERM, grace: 5s}
`

// The kill thread sends a SIGKILL due at a deadline while the loop is busy
// elsewhere; the loop, when it gets there, records that kill once and
// sends no second one.
func TestKillThreadKillsAtTheDeadlineWhileTheLoopIsBusy(t *testing.T) {
	h, alarm := newKillHarness(t, killRule)
	h.exec(100, 1, 1000*s, "restic", "backup")
	name := treeName("restic", 100, 1000*s)
	if got := alarm.last(); got != 1010*s {
		t.Fatalf("alarm set to %v, want the deadline 1010s", got)
	}
	// Rung early (a spurious wake): nothing is due.
	h.clock.set(1010*s - time.Millisecond)
	h.a.KillsDue()
	if n := h.enf.count("kill"); n != 0 {
		t.Fatalf("killed before the deadline: %v", h.enf.callList())
	}
	// At the deadline, with the table lock held by a busy loop.
	h.clock.set(1010*s + 2*time.Millisecond)
	h.a.mu.Lock()
	h.a.KillsDue()
	h.a.mu.Unlock()
	if n := h.enf.count("kill " + name); n != 1 {
		t.Fatalf("the kill thread sent %d kills at the deadline, want 1: %v", n, h.enf.callList())
	}
	h.at(1010*s + 5*time.Millisecond)
	if n := h.enf.count("kill " + name); n != 1 {
		t.Fatalf("%d kills after the loop's timer, want the thread's one: %v", n, h.enf.callList())
	}
	if v := testutil.ToFloat64(h.a.m.kills.WithLabelValues("restic", "SIGKILL", "ok")); v != 1 {
		t.Fatalf("kills_total{SIGKILL,ok} = %v, want 1", v)
	}
	if st := h.states(); st[100] != StateKilled {
		t.Fatalf("state after the kill = %v, want killed", st[100])
	}
	h.exit(100, 1010*s+6*time.Millisecond, 9)
	h.reap(100, 1010*s+7*time.Millisecond)
	if n := testutil.CollectAndCount(h.a.m.killLatency); n != 1 {
		t.Fatalf("kill latency series = %d, want 1", n)
	}
	// No confirm kill on a dead tree, no second thread kill.
	h.at(1010*s + time.Hour)
	h.a.KillsDue()
	if n := h.enf.count("kill"); n != 1 {
		t.Fatalf("killed again after the tree ended: %v", h.enf.callList())
	}
}

// The thread's kill ends the tree before the loop's timer comes: the end
// is recorded as the kill it was.
func TestKillThreadKillRecordedWhenTheEndComesFirst(t *testing.T) {
	h, _ := newKillHarness(t, termRule)
	h.exec(100, 1, 1000*s, "restic", "backup")
	name := treeName("restic", 100, 1000*s)
	h.at(1010 * s)
	if n := h.enf.count("signal " + name + " 15"); n != 1 {
		t.Fatalf("SIGTERM not sent at the deadline: %v", h.enf.callList())
	}
	// deadline + grace: the thread kills, the loop reads the exit before
	// its own timer runs.
	h.clock.set(1015*s + time.Millisecond)
	h.a.KillsDue()
	h.exit(100, 1015*s+time.Millisecond, 9)
	h.reap(100, 1015*s+2*time.Millisecond)
	if n := h.enf.count("kill " + name); n != 1 {
		t.Fatalf("%d kills, want the thread's one: %v", n, h.enf.callList())
	}
	if v := testutil.ToFloat64(h.a.m.kills.WithLabelValues("restic", "SIGKILL", "ok")); v != 1 {
		t.Fatalf("kills_total{SIGKILL,ok} = %v, want 1", v)
	}
	var runtime dto.Metric
	if err := h.a.m.runtime.WithLabelValues("restic", "killed").(prometheus.Histogram).Write(&runtime); err != nil || runtime.GetHistogram().GetSampleCount() != 1 {
		t.Fatalf("runtime of killed trees: %v %v, want one tree", runtime.GetHistogram(), err)
	}
	var kills []Action
	for _, act := range h.a.Actions() {
		if act.Action == "kill" {
			kills = append(kills, act)
		}
	}
	if len(kills) != 2 || kills[0].Result != "ok" || kills[1].Result != "confirmed" {
		t.Fatalf("kill actions %+v, want ok then confirmed", kills)
	}
}

// A tree with a confinement still queued is left to the loop, which waits
// for it before it kills: the process being moved dies with its tree.
func TestKillThreadLeavesQueuedConfinementsToTheLoop(t *testing.T) {
	h, _ := newKillHarness(t, killRule)
	h.exec(100, 1, 1000*s, "restic", "backup")
	name := treeName("restic", 100, 1000*s)
	gate := make(chan struct{})
	h.enf.mu.Lock()
	h.enf.gate = gate
	h.enf.mu.Unlock()
	h.src.mu.Lock()
	h.src.tracked[101] = true
	h.src.mu.Unlock()
	// A child forked a moment before the deadline: its move is blocked.
	h.onLoop(5*s, func() {
		h.a.handle(node.Event{Type: node.EventFork, PID: 101, PPID: 100, Time: 1010*s - time.Millisecond, Born: 1010*s - time.Millisecond})
	})
	h.clock.set(1010 * s)
	h.a.KillsDue()
	if n := h.enf.count("kill"); n != 0 {
		t.Fatalf("the kill thread killed a tree with a queued confinement: %v", h.enf.callList())
	}
	killed := h.onLoopAsync(func() { h.a.tick(1010 * s) })
	select {
	case <-killed:
		t.Fatalf("killed before the confinement: %v", h.enf.callList())
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	select {
	case <-killed:
	case <-time.After(5 * s):
		t.Fatalf("the loop's kill still waits after the confinement: %v", h.enf.callList())
	}
	calls := h.enf.callList()
	ci, ki := slices.Index(calls, "confine "+name+" 101"), slices.Index(calls, "kill "+name)
	if ci < 0 || ki < ci || h.enf.count("kill") != 1 {
		t.Fatalf("calls %v, want 101 confined, then one kill", calls)
	}
}

// In monitor mode the thread kills nothing, and after a reload to monitor
// mode it sends none of the kills armed before.
func TestKillThreadNeverKillsInMonitorMode(t *testing.T) {
	h, alarm := newKillHarness(t, "mode: monitor\n"+killRule)
	h.exec(100, 1, 1000*s, "restic", "backup")
	if got := alarm.last(); got != 0 {
		t.Fatalf("alarm set to %v in monitor mode", got)
	}
	h2, _ := newKillHarness(t, killRule)
	h2.exec(100, 1, 1000*s, "restic", "backup")
	cfg, err := ParseConfig("test.yaml", []byte("mode: monitor\n"+killRule))
	if err != nil {
		t.Fatal(err)
	}
	h2.a.apply(cfg)
	h2.clock.set(1010 * s)
	h2.a.KillsDue()
	for _, hh := range []*harness{h, h2} {
		hh.at(1010 * s)
		if n := hh.enf.count("kill"); n != 0 {
			t.Fatalf("killed in monitor mode: %v", hh.enf.callList())
		}
	}
}
