// Package e2e runs the real overtime binary as root against this machine's
// kernel: real eBPF programs, real processes in a cgroup the test creates,
// real files. Every process, cgroup and file a test makes is removed again;
// the agent only ever matches programs with names of the test's own.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"overtime/agent"
	"overtime/internal/agentproc"
	"overtime/internal/procstat"
	"overtime/internal/testtool"
)

var binary string // the overtime binary built once for all tests

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name, os.Args[1:]))
	}
	if os.Geteuid() != 0 {
		// Nothing here can run without root: say so loudly, and fail
		// where every test must run (make test).
		if os.Getenv(testtool.RequireEnv) != "" {
			fmt.Printf("e2e: FAIL: needs root (eBPF, cgroups), and %s is set\n", testtool.RequireEnv)
			os.Exit(1)
		}
		fmt.Printf("e2e: SKIPPED, no test run: needs root (eBPF, cgroups); set %s to make this a failure\n", testtool.RequireEnv)
		os.Exit(0)
	}
	// In a test VM (test/vm) there is no Go toolchain: the runner builds
	// the agent on the host and names it here.
	if b := os.Getenv(AgentBinEnv); b != "" {
		binary = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "overtime-e2e-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "overtime")
	build := exec.Command("go", "build", "-race", "-o", binary, "overtime/cmd/overtime")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("e2e: build failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// AgentBinEnv names a prebuilt overtime binary to test instead of building
// one; PrebuiltEnv a directory of the helper C programs compiled ahead
// (both set by the VM runner, whose guests have no compilers).
const (
	AgentBinEnv = "OVERTIME_AGENT_BIN"
	PrebuiltEnv = "OVERTIME_PREBUILT_DIR"
)

// cgroupRoot is the hierarchy the agent puts trees in: the cgroup v2 mount
// (/sys/fs/cgroup/unified on a hybrid node, /sys/fs/cgroup on a pure v2
// one), or the v1 freezer on a pure v1 node (v1 true).
func cgroupRoot(t *testing.T) (root string, v1 bool) {
	t.Helper()
	// Before 5.14 (no cgroup.kill) the agent drives the v1 freezer where
	// one is mounted beside v2 (hybrid), and the v2 freeze on pure v2.
	var st syscall.Statfs_t
	freezer := syscall.Statfs("/sys/fs/cgroup/freezer", &st) == nil && st.Type == 0x27e0eb // CGROUP_SUPER_MAGIC
	if hasCgroupKill(t) || !freezer {
		for _, p := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
			if syscall.Statfs(p, &st) == nil && st.Type == 0x63677270 { // CGROUP2_SUPER_MAGIC
				return p, false
			}
		}
	}
	if freezer {
		return "/sys/fs/cgroup/freezer", true
	}
	t.Fatal("no cgroup v2 mount and no v1 freezer")
	return "", false
}

// hasCgroupKill: the kernel is 5.14 or later.
func hasCgroupKill(t *testing.T) bool {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var rel []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(rel), "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	return major > 5 || major == 5 && minor >= 14
}

// testCgroup makes a cgroup of the test's own, removed (with any overtime
// child the agent left, which a test then reports) at the end.
type testCgroup struct {
	dir  string // absolute directory
	path string // the cgroup path, as /proc/PID/cgroup shows it
	v1   bool   // a v1 freezer cgroup (a pure v1 node)
}

// kill ends every process in dir: cgroup.kill on v2 (5.14); otherwise
// freeze (freezer.state on v1, cgroup.freeze on v2), SIGKILL each member,
// thaw.
func (cg *testCgroup) kill(dir string) {
	ctl, frozen, thawed := "freezer.state", "FROZEN", "THAWED"
	if !cg.v1 {
		if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) == nil {
			return
		}
		ctl, frozen, thawed = "cgroup.freeze", "1", "0"
	}
	_ = os.WriteFile(filepath.Join(dir, ctl), []byte(frozen), 0)
	for _, pid := range readPids(filepath.Join(dir, "cgroup.procs")) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.WriteFile(filepath.Join(dir, ctl), []byte(thawed), 0)
}

func newTestCgroup(t *testing.T) *testCgroup {
	t.Helper()
	root, v1 := cgroupRoot(t)
	name := fmt.Sprintf("overtime-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cg := &testCgroup{dir: dir, path: "/" + name, v1: v1}
	t.Cleanup(func() {
		// Kill what is left (only processes in our own cgroup, and in the
		// tree cgroups an agent made in it), then remove. A running agent
		// may still be making a tree cgroup: retry.
		var err error
		for try := 0; try < 50; try++ {
			cg.kill(dir)
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.IsDir() {
					sub := filepath.Join(dir, e.Name())
					cg.kill(sub)
					waitEmpty(sub)
					_ = os.Remove(sub)
				}
			}
			waitEmpty(dir)
			if err = os.Remove(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("remove test cgroup: %v", err)
	})
	return cg
}

func waitEmpty(dir string) {
	for i := 0; i < 200; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil || len(bytes.TrimSpace(b)) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// children lists the child cgroups (overtime's tree cgroups) of cg.
func (cg *testCgroup) children(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(cg.dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// proc is a process the test started.
type proc struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
	err  error
}

// start runs a shell command inside cg: the shell moves itself into the
// cgroup, then execs the command.
func (cg *testCgroup) start(t *testing.T, dir string, script string) *proc {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs && exec %s", cg.dir, script))
	cmd.Dir = dir
	// Stdout and stderr stay nil (/dev/null): a pipe would make Wait wait
	// for every background child that inherited it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return watch(t, cmd)
}

// watch waits for a started cmd (its own process group) in the background;
// whatever is left of the group is killed at the end of the test.
func watch(t *testing.T, cmd *exec.Cmd) *proc {
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitDone waits for the process to exit, at most d.
func (p *proc) waitDone(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// engine writes an executable script named name into dir: a fake backup
// engine whose comm is name.
func engine(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// agentProc is a running overtime agent (see agentproc), failing the test
// on what it cannot do or read.
type agentProc struct {
	*agentproc.Agent
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	done <-chan struct{}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := agentproc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// syncBuffer is a subprocess's output, read while it runs.
type syncBuffer = agentproc.Buffer

// startAgent runs `overtime run` with the config text and waits for /readyz.
func startAgent(t *testing.T, config string, extra ...string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return startAgentFile(t, cfgPath, extra...)
}

func startAgentFile(t *testing.T, cfgPath string, extra ...string) *agentProc {
	t.Helper()
	a := launchAgent(t, nil, cfgPath, extra...)
	a.waitReady()
	return a
}

// launchAgent starts `overtime run` through the wrapper command (which ends
// by exec'ing its arguments; none: the binary itself) without waiting. Its
// log is kept in memory: the agent counts as exited once its hold guard,
// which writes to the same output, has too.
func launchAgent(t *testing.T, wrapper []string, cfgPath string, extra ...string) *agentProc {
	t.Helper()
	p, err := agentproc.Start(agentproc.Options{
		Binary:  binary,
		Wrapper: wrapper,
		Config:  cfgPath,
		Args:    append([]string{"--log-level", "debug"}, extra...),
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &agentProc{Agent: p, t: t, cmd: p.Cmd, addr: p.Addr, done: p.Done()}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
		}
	})
	return a
}

// waitReady waits for /readyz, failing the test when the agent exits first.
func (a *agentProc) waitReady() {
	a.t.Helper()
	// A bound on waiting, not a start-up target (bench/ measures that):
	// the eBPF verifier is CPU-bound, and a VM under TCG on a busy host has
	// taken 28 s to load the programs (about 0.5 s on the host).
	if _, err := a.WaitReady(scaled(readyWait), 50*time.Millisecond); err != nil {
		a.t.Fatal(err)
	}
}

const readyWait = 60 * time.Second

// scaled is a time budget of a test stretched by the run's time scale
// (testtool.TimeScaleEnv; 1 on a host, more in the VM runner's guests,
// where CPU-bound work is many times slower): the wait for work that takes
// CPU (processes to run, the agent to start or act), and every rule
// deadline and window of time that such work must fit in. What a test
// asserts stays the same; on a host nothing changes.
func scaled(d time.Duration) time.Duration { return testtool.Scaled(d) }

// stop ends the agent gracefully (SIGTERM) and returns its exit code.
func (a *agentProc) stop() int {
	code, err := a.Stop(scaled(15 * time.Second))
	if err != nil {
		a.t.Errorf("%v", err)
	}
	return code
}

// crash ends the agent with SIGKILL.
func (a *agentProc) crash() { a.Crash() }

// apiProcess and apiAction are the agent's API types, decoded from JSON.
type apiProcess = agent.ProcessInfo

func (a *agentProc) processes() []apiProcess {
	a.t.Helper()
	out, err := a.Processes()
	if err != nil {
		a.t.Fatal(err)
	}
	return out
}

func (a *agentProc) process(pid int) (apiProcess, bool) {
	for _, p := range a.processes() {
		if p.PID == pid {
			return p, true
		}
	}
	return apiProcess{}, false
}

type apiAction = agent.Action

func (a *agentProc) actions() []apiAction {
	a.t.Helper()
	out, err := a.Actions()
	if err != nil {
		a.t.Fatal(err)
	}
	return out
}

// metric returns the value of one series of /metrics, by its full name with
// labels as exposed (e.g. `overtime_tracked_processes{rule="x"}`); -1 when
// absent.
func (a *agentProc) metric(series string) float64 {
	a.t.Helper()
	m, err := a.Metrics()
	if err != nil {
		a.t.Fatal(err)
	}
	if v, ok := m.Value(series); ok {
		return v
	}
	return -1
}

func (a *agentProc) metricsText() string {
	a.t.Helper()
	text, err := a.MetricsText()
	if err != nil {
		a.t.Fatal(err)
	}
	return text
}

// logLines returns the agent's JSON log records whose msg contains msg.
func (a *agentProc) logLines(msg string) []agentproc.Record { return a.Records(msg) }

// eventually polls cond every 20ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	eventuallyState(t, d, what, func() (bool, string) { return cond(), "" })
}

// eventuallyState polls cond every 20ms until it holds or d passes; on
// timeout the failure says what cond last saw.
func eventuallyState(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			if state != "" {
				t.Fatalf("timed out after %v waiting for %s; last seen: %s", d, what, state)
			}
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pidsOf lists the processes in a cgroup directory.
func pidsOf(t *testing.T, dir string) []int {
	t.Helper()
	return readPids(filepath.Join(dir, "cgroup.procs"))
}

// childPids lists the children of pid.
func childPids(pid int) []int {
	return readPids(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
}

// readPids reads a whitespace-separated list of PIDs; nil if unreadable.
func readPids(path string) []int {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// pidAlive: the process exists and is not a zombie.
func pidAlive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z"
}

// procState is the state letter of /proc/PID/stat ("" when gone).
func procState(pid int) string {
	st, err := procstat.ReadStat("/proc", pid)
	if err != nil {
		return ""
	}
	return string(st.State)
}

// tool finds a command the test runs (see testtool.Find).
func tool(t *testing.T, name string) string { return testtool.Find(t, name) }

// liveTracked counts the processes the agent tracks that have not exited.
// Killed children are orphans that the machine's init reaps when it gets
// to it; until then the agent rightly keeps them, as zombies.
func liveTracked(a *agentProc) int {
	n := 0
	for _, p := range a.processes() {
		switch p.State {
		case "zombie", "exited", "killed":
			if !pidAlive(p.PID) {
				continue
			}
		}
		n++
	}
	return n
}
