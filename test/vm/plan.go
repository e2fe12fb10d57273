package main

import (
	"fmt"
	"strings"
	"time"
)

// benchPkg is the package of the bench command (bench/): a plan line for it
// runs the bench binary against the guest's agent, its run field the
// bench's -only targets; its lines are reported as they are.
const benchPkg = "bench"

// testRun is one test binary run in a guest.
type testRun struct {
	pkg     string // import path below the module: bpf, enforcer, test/e2e
	bin     string // the binary built by go test -c
	agent   bool   // needs a node the agent accepts (cgroups it can drive)
	run     string // -test.run
	skip    string // -test.skip; "^$" for none
	timeout string // -test.timeout
}

// testSet is what every cell runs: smoke in `make test`, full in
// `make test-kernels`.
type testSet struct {
	name        string
	runs        []testRun
	cellTimeout time.Duration // a hung or crashed guest fails its cell after this
	qemuArgs    []string      // more qemu arguments for every cell of the set
}

// defaultTimeScale is the guests' OVERTIME_TIME_SCALE (-time-scale): the
// tests stretch their time budgets by it, and the rule deadlines that
// CPU-bound work must fit in (the agent's restart with its eBPF verifier:
// 2-3 s in a guest alone, up to 28 s with two guests on a busy 2-core
// host; 2000 execs: 130 ms each, 4.5 minutes). Under TCG CPU-bound work is
// about 15 times slower than on the host, but the tests' budgets already
// leave room on a host.
const defaultTimeScale = 5

// notInVMs are tests left out of the guests, and why; the README lists them.
var notInVMs = [][2]string{
	{"bpf TestGeneratedUpToDate", "rebuilds the eBPF objects: needs clang and go (host only)"},
	{"test/e2e TestBorgLockRemovedAfterKill", "borg is a Python program, not in the initramfs"},
	{"test/e2e prometheus, observe tests", "need promtool, prometheus, helm (host only)"},
	{"test/e2e TestLostEventsResync, TestReloadOnSIGHUP, TestHTTPReadOnly", "not kernel-facing beyond the tests run (host only)"},
}

const (
	e2eCore  = "TestTreeEndsAtDeadlinePlusGrace|TestRestartKeepsRealDeadline|TestCrashAdoption|TestShortLivedLeaveNoTrace|TestBadConfigExit2|TestCrashMidKill"
	e2eFiles = "TestCleanupRemovesOnlyWhatTheTreeCreated|TestCleanupInTheTreesMountNamespace|TestResticLockRemovedAfterKill|TestMonitorModeOnlyReports|TestFileTracingOnDemand"
	e2eMore  = "TestLonghornPileUp|TestCapEndsTheNewerAtExec|TestForkingTreeDiesWhole|TestStoppedTreeEnds"
)

var sets = map[string]testSet{
	// The tracer's exec/fork/exit, the kill of a tree that ignores TERM
	// (through the enforcer and through the agent), one cleanup, one
	// capped exec.
	"smoke": {
		name: "smoke",
		runs: []testRun{
			{"bpf", "bpf.test", true, "^(TestExecFilter|TestForkExitReap)$", "^$", "5m"},
			{"enforcer", "enforcer.test", true, "^(TestKillTreeV2|TestKillTreeV2Freeze|TestKillTreeV1Freezer)$", "^$", "5m"},
			{"test/e2e", "e2e.test", true, "^(TestTreeEndsAtDeadlinePlusGrace|TestResticLockRemovedAfterKill|TestCapEndsTheNewerAtExec)$", "^$", "8m"},
		},
		cellTimeout: 12 * time.Minute,
	},
	"full": {
		name: "full",
		runs: []testRun{
			{"bpf", "bpf.test", true, ".", "^TestGeneratedUpToDate$", "20m"},
			{"enforcer", "enforcer.test", true, ".", "^$", "10m"},
			{"test/e2e", "e2e.test", true, "^(" + e2eCore + "|" + e2eFiles + "|" + e2eMore + ")$", "^$", "30m"},
		},
		cellTimeout: 50 * time.Minute,
	},
	// The getppid target of the bench (bench/getppid.go) against the
	// guest's agent, with the test of the file tracing mode: what a
	// tracked engine costs the node's syscalls on each kernel.
	"perf": {
		name: "perf",
		runs: []testRun{
			{"bpf", "bpf.test", true, "^TestFileTracingMode$", "^$", "5m"},
			{benchPkg, "bench", true, "getppid", "-", "10m"},
		},
		cellTimeout: 20 * time.Minute,
		// The guest's clock counts instructions (one a nanosecond), not
		// the host's time: a rate is then what the guest's code costs,
		// whatever else the host runs. Under plain TCG the rounds spread
		// by ±50% with the host's load, far more than the target's 2%.
		// Idle time still passes as on the host (sleep=on).
		qemuArgs: []string{"-icount", "shift=0,sleep=on,align=off"},
	},
	// The full set's eBPF tracer tests alone: for a change to the
	// programs, every verifier of the matrix in a few minutes.
	"bpf": {
		name: "bpf",
		runs: []testRun{
			{"bpf", "bpf.test", true, ".", "^TestGeneratedUpToDate$", "20m"},
		},
		cellTimeout: 25 * time.Minute,
	},
}

// planFile is the set as the guest's init reads it.
func planFile(s testSet) []byte {
	var b strings.Builder
	for _, r := range s.runs {
		needs := "-"
		if r.agent {
			needs = "agent"
		}
		fmt.Fprintf(&b, "%s %s %s %s %s %s\n", r.pkg, r.bin, needs, r.run, r.skip, r.timeout)
	}
	return []byte(b.String())
}

// layouts are the cgroup layouts a guest's init can mount.
var layouts = []string{"v2", "v1", "hybrid"}

// refusals are the cells where the agent refuses to start: the README
// documents each with the reason the agent prints. A cell whose agent
// starts where a refusal is listed fails, so the list cannot go stale.
// Keyed by KERNEL/LAYOUT, or KERNEL/* for every layout.
var refusals = map[string]string{
	// None today: pure v2 before 5.14 kills by freeze-kill-thaw, and the
	// eBPF programs load on 5.10 and 6.1.
}

// refusal is the documented refusal of a cell, if any.
func refusal(key string) (string, bool) {
	if r, ok := refusals[key]; ok {
		return r, true
	}
	k, _, _ := strings.Cut(key, "/")
	r, ok := refusals[k+"/*"]
	return r, ok
}
