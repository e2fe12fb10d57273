package enforcer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/procstat"
	"overtime/internal/testtool"
)

const v1Mount = "/sys/fs/cgroup/freezer"

// v2Mount and v2Mode are this node's cgroup v2 hierarchy and the mode that
// drives it: /sys/fs/cgroup/unified on a hybrid node, /sys/fs/cgroup on a
// pure v2 one; "" on a pure v1 node. v2NoKill: the kernel has no
// cgroup.kill (before 5.14), so the enforcer kills by freeze-kill-thaw.
var v2Mount, v2Mode, v2NoKill = findV2()

func findV2() (mount, mode string, noKill bool) {
	for _, c := range []struct{ mount, mode string }{
		{defaultV2Hybrid, ModeHybrid},
		{defaultV2Unified, ModeUnified},
	} {
		var st unix.Statfs_t
		if unix.Statfs(c.mount, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			mount, mode = c.mount, c.mode
			break
		}
	}
	if ok, _, err := kernelAtLeast(5, 14); err == nil && !ok {
		noKill = true
	}
	return mount, mode, noKill
}

// treeScript is a root that ignores TERM through a trap (children do not
// inherit a trap, unlike an ignored signal) with two sleeping children.
const treeScript = `trap 'echo term' TERM; sleep 100 & sleep 100 & while :; do wait; sleep 0.2; done`

func randName() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testtool.Skip(t, "needs root")
	}
}

// testParent is a cgroup the test made and owns, with everything below it.
type testParent struct {
	mount string // hierarchy mount
	group string // "/overtime-enftest-..."
	v1    bool
}

func (p testParent) dir() string { return filepath.Join(p.mount, p.group) }

func newParent(t *testing.T, v1 bool) testParent {
	t.Helper()
	needRoot(t)
	mount := v2Mount
	if v1 {
		mount = v1Mount
	} else if mount == "" {
		t.Skip("no cgroup v2 mount (pure v1)")
	}
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		// The v1 tests need a v1 freezer hierarchy, which a pure v2 node
		// lacks (README: Tests).
		t.Skipf("no cgroup hierarchy at %s", mount)
	}
	p := testParent{mount: mount, group: "/overtime-enftest-" + randName(), v1: v1}
	if err := os.Mkdir(p.dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.destroy(t) })
	return p
}

// destroy kills every process left under the test's cgroup (all started by
// the test) and removes its cgroups, deepest first.
func (p testParent) destroy(t *testing.T) {
	var dirs []string
	_ = filepath.WalkDir(p.dir(), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := p.allPids(dirs)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left in %s: %v", p.dir(), pids)
			break
		}
		if p.v1 {
			for _, d := range dirs {
				_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("FROZEN"), 0)
			}
			for _, pid := range pids {
				killPid(pid)
			}
			for _, d := range dirs {
				_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0)
			}
		} else if err := os.WriteFile(filepath.Join(p.dir(), "cgroup.kill"), []byte("1"), 0); err != nil {
			// Before 5.14: the test's own processes, one by one.
			for _, pid := range pids {
				killPid(pid)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for range 100 {
			if err = os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	}
}

func (p testParent) allPids(dirs []string) []int {
	var out []int
	for _, d := range dirs {
		out = append(out, readPids(d)...)
	}
	return out
}

func killPid(pid int) {
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	}
}

func readPids(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// proc is a process the test started, with a pidfd the test owns.
type proc struct {
	pid   int
	pidfd int
}

// start runs script under sh inside the test's cgroup: sh waits on stdin
// until its PID has been written into cgroup.procs, so everything it forks
// is born there.
func start(t *testing.T, p testParent, script string, stdin ...*os.File) *proc {
	t.Helper()
	cmd := exec.Command("sh", "-c", `read _; exec sh -c "$1"`, "sh", script)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	pid := cmd.Process.Pid
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		<-done
		unix.Close(fd)
		pw.Close()
	})
	if err := os.WriteFile(filepath.Join(p.dir(), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	return &proc{pid: pid, pidfd: fd}
}

// child opens a pidfd for a process the test's processes forked. Its
// parent is alive and has not reaped it, so the PID is still that child.
func child(t *testing.T, pid int) *proc {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	})
	return &proc{pid: pid, pidfd: fd}
}

// children waits until pid has n children and returns them.
func children(t *testing.T, pid, n int) []*proc {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
		f := strings.Fields(string(b))
		if len(f) >= n {
			var out []*proc
			for _, s := range f[:n] {
				c, _ := strconv.Atoi(s)
				out = append(out, child(t, c))
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has children %v, want %d", pid, f, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitForExec waits until pid runs comm (after sh's exec).
func waitForComm(t *testing.T, pid int, comm string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if strings.TrimSpace(string(b)) == comm {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d runs %q, want %q", pid, strings.TrimSpace(string(b)), comm)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func born(t *testing.T, pid int) time.Duration {
	t.Helper()
	st, err := procstat.ReadStat("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	return procstat.TicksToBoot(st.Start)
}

func (p *proc) alive() bool {
	return unix.PidfdSendSignal(p.pidfd, 0, nil, 0) == nil
}

func (p *proc) waitExit(d time.Duration) bool { return waitExit(p.pidfd, d) }

func cgroupPath(t *testing.T, pid int, v1 bool) string {
	t.Helper()
	c, err := cgroupOf("/proc", pid, v1)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newEnforcer(t *testing.T, mode string) *Enforcer {
	t.Helper()
	// Before 5.14 the v2 tests drive the v2 freeze, which a hybrid node
	// would otherwise leave for the v1 freezer.
	return newEnforcerOpts(t, Options{Mode: mode, FreezeKill: mode == v2Mode && v2NoKill})
}

func newEnforcerOpts(t *testing.T, opts Options) *Enforcer {
	t.Helper()
	// A prefix of the tests' own: an agent running on the same machine
	// never adopts these trees, and these tests never see its trees.
	opts.Prefix = testPrefix
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// treeName is a fresh tree name; Release runs at the end in any case.
const testPrefix = "ovtestenf"

func treeName(t *testing.T, e *Enforcer) string {
	name := testPrefix + ".enftest." + randName()
	t.Cleanup(func() { _ = release(e, name) })
	return name
}

func confine(t *testing.T, e *Enforcer, name string, ps ...*proc) {
	t.Helper()
	for _, p := range ps {
		if err := e.Confine(name, p.pid, born(t, p.pid), true); err != nil {
			t.Fatalf("confine %d: %v", p.pid, err)
		}
	}
}

func sortedInts(s []int) []int {
	out := append([]int{}, s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// release is Release retried while the cgroup is busy with tasks finishing
// their exit, as the agent retries it from a timer.
func release(e *Enforcer, name string) error {
	var err error
	for i := 0; i < 500; i++ {
		var b interface{ Busy() bool }
		if err = e.Release(name); !errors.As(err, &b) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}
