package enforcer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// killTreeTest is the kill path shared by v2 and v1: a root that ignores
// TERM and two children, all confined; TERM reaches 3 and spares the root;
// Kill ends all 3 and spares a neighbour in the same parent cgroup; Release
// removes the tree cgroup.
func killTreeTest(t *testing.T, v1 bool, mode string, freeze bool, method string) {
	p := newParent(t, v1)
	e := newEnforcerOpts(t, Options{Mode: mode, FreezeKill: freeze})
	if e.V1() != v1 {
		t.Fatalf("V1() = %v, want %v (mode %s)", e.V1(), v1, e.Mode())
	}
	if e.KillMethod() != method {
		t.Fatalf("KillMethod() = %q, want %q", e.KillMethod(), method)
	}
	root := start(t, p, treeScript)
	neighbour := start(t, p, "exec sleep 100")
	kids := children(t, root.pid, 2)
	for _, k := range kids {
		// Until it has executed sleep, a child is a copy of the shell
		// with its TERM trap.
		waitForComm(t, k.pid, "sleep")
	}
	name := treeName(t, e)
	confine(t, e, name, root, kids[0], kids[1])

	treeDir := filepath.Join(p.dir(), name)
	got := sortedInts(readPids(treeDir))
	want := sortedInts([]int{root.pid, kids[0].pid, kids[1].pid})
	if !slices.Equal(got, want) {
		t.Fatalf("tree cgroup holds %v, want %v", got, want)
	}
	if c := cgroupPath(t, neighbour.pid, v1); c != p.group {
		t.Fatalf("neighbour moved to %s", c)
	}

	n, err := e.Signal(name, unix.SIGTERM)
	if err != nil || n != 3 {
		t.Fatalf("Signal TERM = %d, %v; want 3", n, err)
	}
	for _, k := range kids {
		if !k.waitExit(5 * time.Second) {
			t.Fatalf("child %d survived TERM", k.pid)
		}
	}
	if root.waitExit(200 * time.Millisecond) {
		t.Fatal("root died of TERM it traps")
	}

	if err := e.Kill(name); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for _, q := range []*proc{root, kids[0], kids[1]} {
		if !q.waitExit(5 * time.Second) {
			t.Fatalf("pid %d survived Kill", q.pid)
		}
	}
	if !neighbour.alive() {
		t.Fatal("neighbour killed")
	}
	e.WaitKills()
	if freeze {
		thawed(t, treeDir)
	}
	if err := release(e, name); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := os.Stat(treeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree cgroup still there: %v", err)
	}
	if err := release(e, name); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if !neighbour.alive() {
		t.Fatal("neighbour killed by Release")
	}
}

// TestKillTreeV2 drives the kernel's own kill: cgroup.kill, or before 5.14
// freeze-kill-thaw.
func TestKillTreeV2(t *testing.T) {
	method := KillCgroupKill
	if v2NoKill {
		method = KillV2Freeze
	}
	killTreeTest(t, false, v2Mode, v2NoKill, method)
}

// TestKillTreeV2Freeze drives the v2 freeze-kill-thaw of kernels before
// 5.14 wherever cgroup v2 is mounted.
func TestKillTreeV2Freeze(t *testing.T) { killTreeTest(t, false, v2Mode, true, KillV2Freeze) }

func TestKillTreeV1Freezer(t *testing.T) { killTreeTest(t, true, ModeLegacy, false, KillV1Freezer) }

// thawed fails unless the v2 cgroup dir is neither frozen nor freezing.
func thawed(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "0" || !strings.Contains(string(ev), "frozen 0") {
		t.Fatalf("%s left frozen after the kill: cgroup.freeze %q, cgroup.events %q", dir, b, ev)
	}
}

// failAdd refuses to move one PID, as a v2 "no internal processes" EBUSY
// would.
type failAdd struct {
	hierarchy
	pid int
}

func (f failAdd) add(group string, pid int) error {
	if pid == f.pid {
		return unix.EBUSY
	}
	return f.hierarchy.add(group, pid)
}

// Moving a PID moves that process only: children it forked earlier stay
// behind until they are confined themselves, and one that cannot be moved
// is still killed through its pidfd.
func TestChildrenForkedBeforeMoveStayOutside(t *testing.T) {
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	root := start(t, p, treeScript)
	kids := children(t, root.pid, 2)
	name := treeName(t, e)
	confine(t, e, name, root)

	group := path.Join(p.group, name)
	if c := cgroupPath(t, root.pid, false); c != group {
		t.Fatalf("root in %s, want %s", c, group)
	}
	for _, k := range kids {
		if c := cgroupPath(t, k.pid, false); c != p.group {
			t.Fatalf("child %d in %s, want it left in %s", k.pid, c, p.group)
		}
	}

	confine(t, e, name, kids[0])
	if c := cgroupPath(t, kids[0].pid, false); c != group {
		t.Fatalf("confined child in %s", c)
	}
	e.h = failAdd{hierarchy: e.h, pid: kids[1].pid}
	err := e.Confine(name, kids[1].pid, born(t, kids[1].pid), false)
	if !errors.Is(err, ErrUnconfined) {
		t.Fatalf("Confine of unmovable child = %v, want ErrUnconfined", err)
	}
	if c := cgroupPath(t, kids[1].pid, false); c != p.group {
		t.Fatalf("unmovable child in %s", c)
	}

	if err := e.Kill(name); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for _, q := range []*proc{root, kids[0], kids[1]} {
		if !q.waitExit(5 * time.Second) {
			t.Fatalf("pid %d survived Kill", q.pid)
		}
	}
}

// Without confining, cgroup.kill alone misses children forked before the
// move: this is what the previous test guards against.
func TestKillWithoutChildrenMissesThem(t *testing.T) {
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	root := start(t, p, treeScript)
	kids := children(t, root.pid, 2)
	name := treeName(t, e)
	confine(t, e, name, root)
	if err := e.Kill(name); err != nil {
		t.Fatal(err)
	}
	if !root.waitExit(5 * time.Second) {
		t.Fatal("root survived")
	}
	if !kids[0].alive() || !kids[1].alive() {
		t.Fatal("an unconfined child died: the tree cgroup held more than the root")
	}
}

func TestPIDReuseGuard(t *testing.T) {
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	q := start(t, p, "exec sleep 100")
	waitForComm(t, q.pid, "sleep")
	name := treeName(t, e)
	err := e.Confine(name, q.pid, born(t, q.pid)+time.Second, false)
	if !errors.Is(err, ErrPIDReused) {
		t.Fatalf("Confine with wrong start time = %v, want ErrPIDReused", err)
	}
	var g interface{ Gone() bool }
	if !errors.As(err, &g) || !g.Gone() {
		t.Fatalf("Confine of a reused PID does not say the process is gone: %v", err)
	}
	if c := cgroupPath(t, q.pid, false); c != p.group {
		t.Fatalf("process moved to %s", c)
	}
	if _, err := os.Stat(filepath.Join(p.dir(), name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree cgroup created: %v", err)
	}
	if _, err := e.Signal(name, 0); !errors.Is(err, ErrUnknownTree) {
		t.Fatalf("refused pid left a tree behind: %v", err)
	}
	// Nothing of the tree is known: a kill says it is gone.
	if err := e.Kill(name); !errors.Is(err, ErrUnknownTree) || !errors.As(err, &g) || !g.Gone() {
		t.Fatalf("Kill of a tree never confined: %v, want unknown tree, gone", err)
	}
	// The right start time is accepted.
	confine(t, e, name, q)
}

func TestReleaseGivesMembersBack(t *testing.T) {
	for _, v1 := range []bool{false, true} {
		mode := v2Mode
		if v1 {
			mode = ModeLegacy
		}
		t.Run(mode, func(t *testing.T) {
			p := newParent(t, v1)
			e := newEnforcer(t, mode)
			q := start(t, p, "exec sleep 100")
			name := treeName(t, e)
			confine(t, e, name, q)
			if c := cgroupPath(t, q.pid, v1); c != path.Join(p.group, name) {
				t.Fatalf("in %s before Release", c)
			}
			if err := release(e, name); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if !q.alive() {
				t.Fatal("member died")
			}
			if c := cgroupPath(t, q.pid, v1); c != p.group {
				t.Fatalf("member in %s after Release, want %s", c, p.group)
			}
			if _, err := os.Stat(filepath.Join(p.dir(), name)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("tree cgroup still there: %v", err)
			}
		})
	}
}

// A second instance (the agent after a crash) finds the tree cgroup the
// first left, kills through it and removes it.
func TestAdoptAfterCrash(t *testing.T) {
	p := newParent(t, false)
	e1 := newEnforcer(t, v2Mode)
	root := start(t, p, treeScript)
	kids := children(t, root.pid, 2)
	name := treeName(t, e1)
	confine(t, e1, name, root, kids[0], kids[1])

	e2 := newEnforcer(t, v2Mode)
	t.Cleanup(func() { _ = e2.Release(name) })
	found, err := e2.Adopt()
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	want := sortedInts([]int{root.pid, kids[0].pid, kids[1].pid})
	if got := sortedInts(found[name]); !slices.Equal(got, want) {
		t.Fatalf("Adopt found %v for %s, want %v", got, name, want)
	}
	for n := range found {
		if !strings.HasPrefix(n, testPrefix+".") {
			t.Fatalf("Adopt returned a foreign cgroup %q", n)
		}
	}
	// Adopted members are watched when confined again (already inside).
	confine(t, e2, name, root)
	if err := e2.Kill(name); err != nil {
		t.Fatalf("Kill adopted: %v", err)
	}
	for _, q := range []*proc{root, kids[0], kids[1]} {
		if !q.waitExit(5 * time.Second) {
			t.Fatalf("pid %d survived Kill", q.pid)
		}
	}
	if err := release(e2, name); err != nil {
		t.Fatalf("Release adopted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.dir(), name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tree cgroup still there: %v", err)
	}
}

func TestNewRejectsBadMode(t *testing.T) {
	if _, err := New(Options{Mode: "bogus"}); err == nil {
		t.Fatal("bogus mode accepted")
	}
	dir := t.TempDir()
	if _, err := New(Options{Mode: ModeLegacy, Root: dir}); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("a plain directory as the freezer mount: %v, want an error naming %s", err, dir)
	}
	if _, err := New(Options{Mode: ModeUnified, Root: dir}); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("a plain directory as the cgroup v2 mount: %v, want an error naming %s", err, dir)
	}
}

func TestParseCgroupFile(t *testing.T) {
	const f = "12:freezer,cpu:/a/b\n0::/x/y\n"
	for _, tc := range []struct {
		in   string
		v1   bool
		want string
		ok   bool
	}{
		{f, false, "/x/y", true},
		{f, true, "/a/b", true},
		{"0::/../../z\n", false, "", false},
		{"1:name=systemd:/\n", false, "", false},
		{"1:name=systemd:/\n", true, "", false},
	} {
		got, err := parseCgroupFile(tc.in, tc.v1)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseCgroupFile(%q, %v) = %q, %v", tc.in, tc.v1, got, err)
		}
	}
}

// A member's PID is reused by an unrelated process before the tree is
// signalled (the agent has not seen the exit yet): the newcomer is never
// signalled, because members are reached only through their pidfds and the
// tree cgroup. Reuse is forced with ns_last_pid, the last PID the kernel
// handed out in a PID namespace. On the node's namespace any fork elsewhere
// could take the PID first, so the test runs again as the first process
// of a private PID namespace (and mount namespace, for its own /proc),
// where only it forks.
func TestReusedPIDNeverSignalled(t *testing.T) {
	needRoot(t)
	if os.Getenv(inPIDNamespace) == "" {
		if v2Mount == "" {
			// As newParent would inside: the run there would skip, and
			// a skip there is no pass here.
			t.Skip("no cgroup v2 mount (pure v1)")
		}
		runInPIDNamespace(t)
		return
	}
	// Here: PID 1 of a new PID namespace, in a mount namespace of our own.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Fatalf("mount this namespace's /proc: %v", err)
	}
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	victim := start(t, p, "exec sleep 1000")
	waitForComm(t, victim.pid, "sleep")
	name := treeName(t, e)
	// Unmovable, so the enforcer holds it by its pidfd alone.
	e.h = failAdd{hierarchy: e.h, pid: victim.pid}
	if err := e.Confine(name, victim.pid, born(t, victim.pid), false); !errors.Is(err, ErrUnconfined) {
		t.Fatalf("Confine = %v, want ErrUnconfined", err)
	}
	pid := victim.pid
	if err := unix.PidfdSendSignal(victim.pidfd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	if !victim.waitExit(5 * time.Second) {
		t.Fatal("victim did not die")
	}
	// Wait for the reap, then hand its PID to a newcomer.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not reaped in 5s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
		t.Fatalf("set ns_last_pid: %v", err)
	}
	newcomer := exec.Command("sleep", "1000")
	if err := newcomer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = newcomer.Process.Kill(); _ = newcomer.Wait() })
	if newcomer.Process.Pid != pid {
		t.Fatalf("newcomer got pid %d, want the victim's %d: something else forked in this PID namespace", newcomer.Process.Pid, pid)
	}
	waitForComm(t, pid, "sleep")

	if n, err := e.Signal(name, unix.SIGTERM); err != nil || n != 0 {
		t.Fatalf("Signal = %d, %v: want 0 processes signalled", n, err)
	}
	if err := e.Kill(name); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	// Everything Kill does is done once its background kills are; a
	// signal sent to the newcomer would then be pending, or ending it.
	// Once it sleeps (not running: a dying process runs to its end), it
	// must have nothing pending.
	e.WaitKills()
	deadline = time.Now().Add(5 * time.Second)
	for {
		state, pending := procStatus(t, pid)
		if pending != "" {
			t.Fatalf("the process that reused the PID has signals pending: %s", pending)
		}
		if strings.HasPrefix(state, "S") {
			break
		}
		if !strings.HasPrefix(state, "R") || time.Now().After(deadline) {
			t.Fatalf("the process that reused the PID is %q, want S (sleeping)", state)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := release(e, name); err != nil {
		t.Fatal(err)
	}
}

// procStatus reads the state of pid and its pending signals ("" if none)
// from /proc/PID/status.
func procStatus(t *testing.T, pid int) (state, pending string) {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			state = v
		case "SigPnd", "ShdPnd":
			if strings.Trim(v, "0") != "" {
				pending += k + " " + v + " "
			}
		}
	}
	return state, strings.TrimSpace(pending)
}

// inPIDNamespace is set in the environment of a test binary that
// runInPIDNamespace started.
const inPIDNamespace = "OVERTIME_TEST_IN_PIDNS"

// runInPIDNamespace runs t again, alone, in a new test binary that is the
// first process of a new PID namespace and has a mount namespace of its
// own, and fails t if it fails or does not run.
func runInPIDNamespace(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inPIDNamespace+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a private PID namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in a private PID namespace, %s did not pass:\n%s", t.Name(), out)
	}
	t.Logf("in a private PID namespace:\n%s", out)
}

// On cgroup v2, Kill signals the members it knows through their pidfds at
// once, and the sweep (cgroup.kill, or freeze-kill-thaw) ends in the
// background whatever else is in the tree cgroup: here a process put there
// behind the enforcer's back, as a child forked a moment before the kill
// would be, and a forking loop that keeps making new members.
func TestKillSweepsTheCgroup(t *testing.T) {
	t.Run("kernel", func(t *testing.T) { sweepTest(t, v2NoKill) })
	t.Run("freeze", func(t *testing.T) { sweepTest(t, true) })
}

func sweepTest(t *testing.T, freeze bool) {
	p := newParent(t, false)
	e := newEnforcerOpts(t, Options{Mode: v2Mode, FreezeKill: freeze})
	root := start(t, p, "exec sleep 100")
	stranger := start(t, p, "exec sleep 100")
	forker := start(t, p, "while :; do sleep 100 & done")
	name := treeName(t, e)
	confine(t, e, name, root)
	dir := filepath.Join(p.dir(), name)
	for _, q := range []*proc{stranger, forker} {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(q.pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Kill(name); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	e.WaitKills()
	for _, q := range []*proc{root, stranger, forker} {
		if !q.waitExit(5 * time.Second) {
			t.Fatalf("pid %d in the tree cgroup survived Kill", q.pid)
		}
	}
	// The forker's children, born in the tree cgroup while it ran, are
	// ended too: nothing forks while the cgroup is frozen (with
	// cgroup.kill, the kernel kills forks racing in).
	left := readPids(dir)
	for deadline := time.Now().Add(5 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = readPids(dir) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("tree cgroup still holds %v 5s after the kill", left)
	}
	if freeze {
		thawed(t, dir)
	}
	if err := release(e, name); err != nil {
		t.Fatal(err)
	}
}
