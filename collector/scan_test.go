package collector

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/node"
	"overtime/internal/procstat"
	"overtime/internal/testtool"
)

// fakeProc is one process of a fixture proc tree.
type fakeProc struct {
	pid     int
	stat    string // whole stat line; built from the fields below when empty
	comm    string
	state   byte
	ppid    int
	flags   uint64
	start   uint64
	cmdline string // NUL-separated, as the kernel writes it
	exe     string // symlink target; none when empty
	cgroup  string
	fds     map[string]string // fd number → link target
}

// flags of a user process and of a kernel thread, as read on a real node.
const (
	userFlags    = 0x400100
	kthreadFlags = 0x208040
)

func (f fakeProc) statLine() string {
	if f.stat != "" {
		return f.stat
	}
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice num_threads
	// itrealvalue starttime vsize rss ...
	return fmt.Sprintf("%d (%s) %c %d %d %d 0 -1 %d 120 0 0 0 3 1 0 0 20 0 1 0 %d 8437760 243 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		f.pid, f.comm, f.state, f.ppid, f.pid, f.pid, f.flags, f.start)
}

// writeFakeProc builds a proc tree under dir.
func writeFakeProc(t testing.TB, dir string, procs ...fakeProc) {
	t.Helper()
	write := func(path, data string) {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Entries a real /proc has beside the PIDs; Scan must ignore them.
	write(filepath.Join(dir, "uptime"), "1000.00 900.00\n")
	if err := os.MkdirAll(filepath.Join(dir, "sys", "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range procs {
		pd := filepath.Join(dir, strconv.Itoa(f.pid))
		if err := os.MkdirAll(filepath.Join(pd, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(pd, "stat"), f.statLine())
		write(filepath.Join(pd, "cmdline"), f.cmdline)
		write(filepath.Join(pd, "cgroup"), f.cgroup)
		if f.exe != "" {
			if err := os.Symlink(f.exe, filepath.Join(pd, "exe")); err != nil {
				t.Fatal(err)
			}
		}
		for fd, target := range f.fds {
			if err := os.Symlink(target, filepath.Join(pd, "fd", fd)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

const (
	fixturePodCgroup = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d5f1a3c_8e0b_4a6e_9a59_3f8e6f0b1c2d.slice/cri-containerd-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope"
	// A hybrid node: v1 hierarchies and the unified one.
	fixtureHybridCgroup = "12:freezer:/kubepods/burstable/pod0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d/5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c\n" +
		"4:cpu,cpuacct:/kubepods/burstable/pod0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d/5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c\n" +
		"1:name=systemd:/kubepods/burstable\n" +
		"0::" + fixturePodCgroup + "\n"
)

var fixtureProcs = []fakeProc{
	{pid: 1, comm: "systemd", state: 'S', ppid: 0, flags: userFlags, start: 1,
		cmdline: "/sbin/init\x00splash\x00", exe: "/usr/lib/systemd/systemd", cgroup: "0::/init.scope\n"},
	{pid: 2, comm: "kthreadd", state: 'S', ppid: 0, flags: kthreadFlags, start: 1, cgroup: "0::/\n"},
	{pid: 31, comm: "kworker/0:1-events", state: 'I', ppid: 2, flags: kthreadFlags | 0x4000000, start: 5, cgroup: "0::/\n"},
	{pid: 4242, comm: "restic", state: 'R', ppid: 4200, flags: userFlags, start: 123456,
		cmdline: "restic\x00backup\x00--tag\x00nightly run\x00/data\x00",
		exe:     "/usr/local/bin/restic (deleted)", cgroup: fixtureHybridCgroup},
	// comm may hold spaces and parentheses.
	{pid: 77, comm: "tmux: s) (x", state: 'S', ppid: 1, flags: userFlags, start: 400,
		cmdline: "tmux\x00", exe: "/usr/bin/tmux", cgroup: "0::/user.slice/user-1000.slice/session-2.scope\n"},
	// setproctitle: one argument with spaces, no trailing NUL.
	{pid: 78, comm: "postgres", state: 'S', ppid: 1, flags: userFlags, start: 401,
		cmdline: "postgres: checkpointer", exe: "/usr/lib/postgresql/16/bin/postgres", cgroup: "0::/system.slice/postgresql.service\n"},
	{pid: 99, comm: "borg", state: 'Z', ppid: 1, flags: userFlags | 0x4, start: 500, cgroup: "0::/\n"},
	// Exiting: its memory is gone (no exe, no cmdline) but it is not yet a zombie.
	{pid: 101, comm: "kopia", state: 'D', ppid: 1, flags: userFlags | 0x4, start: 600, cgroup: "0::/\n"},
	// Unreadable: counted, left out.
	{pid: 100, stat: "garbage\n", cgroup: "0::/\n"},
}

func newFixture(t testing.TB, v1 bool, procs ...fakeProc) *Procfs {
	t.Helper()
	dir := t.TempDir()
	writeFakeProc(t, dir, procs...)
	p, err := NewProcfs(dir, v1)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestScanFixture(t *testing.T) {
	p := newFixture(t, false, fixtureProcs...)
	got, err := p.Scan()
	if err != nil {
		t.Fatal(err)
	}
	want := []node.Process{
		{PID: 1, PPID: 0, Comm: "systemd", Args: []string{"/sbin/init", "splash"},
			Exe: "/usr/lib/systemd/systemd", Cgroup: "/init.scope",
			Start: 10 * time.Millisecond, Born: 10 * time.Millisecond},
		{PID: 77, PPID: 1, Comm: "tmux: s) (x", Args: []string{"tmux"},
			Exe: "/usr/bin/tmux", Cgroup: "/user.slice/user-1000.slice/session-2.scope",
			Start: 4 * time.Second, Born: 4 * time.Second},
		{PID: 78, PPID: 1, Comm: "postgres", Args: []string{"postgres: checkpointer"},
			Exe: "/usr/lib/postgresql/16/bin/postgres", Cgroup: "/system.slice/postgresql.service",
			Start: 4010 * time.Millisecond, Born: 4010 * time.Millisecond},
		// A zombie: listed, marked, with what stat still says.
		{PID: 99, PPID: 1, Comm: "borg", Start: 5 * time.Second, Born: 5 * time.Second, Zombie: true},
		{PID: 4242, PPID: 4200, Comm: "restic", Args: []string{"restic", "backup", "--tag", "nightly run", "/data"},
			Exe: "/usr/local/bin/restic", Cgroup: fixturePodCgroup,
			Start: 1234560 * time.Millisecond, Born: 1234560 * time.Millisecond},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Scan:\n got %+v\nwant %+v", got, want)
	}
	if n := p.Skipped(); n != 1 {
		t.Errorf("Skipped() = %d, want 1 (pid 100)", n)
	}

	// Each field agrees with the single-field readers.
	for _, proc := range got {
		if proc.Zombie {
			if _, err := p.Process(proc.PID); !errors.Is(err, ErrGone) {
				t.Errorf("Process(zombie %d) error = %v, want ErrGone", proc.PID, err)
			}
			continue
		}
		cg, err := p.Cgroup(proc.PID)
		if err != nil || cg != proc.Cgroup {
			t.Errorf("pid %d: Cgroup() = %q, %v; Scan said %q", proc.PID, cg, err, proc.Cgroup)
		}
		exe, err := p.Exe(proc.PID)
		if err != nil || exe != proc.Exe {
			t.Errorf("pid %d: Exe() = %q, %v; Scan said %q", proc.PID, exe, err, proc.Exe)
		}
		one, err := p.Process(proc.PID)
		if err != nil || !reflect.DeepEqual(one, proc) {
			t.Errorf("Process(%d) = %+v, %v; Scan said %+v", proc.PID, one, err, proc)
		}
	}
}

func TestScanFixtureV1(t *testing.T) {
	p := newFixture(t, true, fixtureProcs[3]) // restic, on a hybrid node
	got, err := p.Scan()
	if err != nil {
		t.Fatal(err)
	}
	want := "/kubepods/burstable/pod0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d/5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"
	if len(got) != 1 || got[0].Cgroup != want {
		t.Fatalf("Scan = %+v, want one process in the freezer cgroup %s", got, want)
	}
	if cg, err := p.Cgroup(4242); err != nil || cg != want {
		t.Errorf("Cgroup(4242) = %q, %v, want %q", cg, err, want)
	}
}

func TestProcessFixtureErrors(t *testing.T) {
	p := newFixture(t, false, fixtureProcs...)
	for _, tt := range []struct {
		pid  int
		want error
	}{
		{2, ErrKernelThread},
		{31, ErrKernelThread},
		{99, ErrGone},    // zombie
		{101, ErrGone},   // exiting
		{12345, ErrGone}, // no such PID
	} {
		if _, err := p.Process(tt.pid); !errors.Is(err, tt.want) {
			t.Errorf("Process(%d) error = %v, want %v", tt.pid, err, tt.want)
		}
	}
	_, err := p.Process(100)
	if err == nil || errors.Is(err, ErrGone) || errors.Is(err, ErrKernelThread) {
		t.Errorf("Process(100) error = %v, want a parse error", err)
	}
}

func TestScanFailures(t *testing.T) {
	t.Run("no cgroup line", func(t *testing.T) {
		// The v2 line is wanted; a pure v1 node read as v2 fails every
		// process, and so the scan.
		p := newFixture(t, false,
			fakeProc{pid: 10, comm: "a", state: 'S', ppid: 1, flags: userFlags, start: 1,
				cmdline: "a\x00", exe: "/a", cgroup: "3:freezer:/x\n"},
			fakeProc{pid: 11, comm: "b", state: 'S', ppid: 1, flags: userFlags, start: 1,
				cmdline: "b\x00", exe: "/b", cgroup: "3:freezer:/y\n"})
		got, err := p.Scan()
		if err == nil || !strings.Contains(err.Error(), "no cgroup v2 (0::) line") {
			t.Fatalf("Scan = %v, %v; want an error naming the missing line", got, err)
		}
		if strings.Count(err.Error(), "process 1") != 2 {
			t.Errorf("error %q should name both processes", err)
		}
	})
	t.Run("root gone", func(t *testing.T) {
		p := newFixture(t, false, fixtureProcs[0])
		if err := os.RemoveAll(p.Root()); err != nil {
			t.Fatal(err)
		}
		if got, err := p.Scan(); err == nil {
			t.Fatalf("Scan of a removed root = %v, nil; want an error", got)
		}
	})
	t.Run("only kernel threads", func(t *testing.T) {
		p := newFixture(t, false, fixtureProcs[1], fixtureProcs[2])
		got, err := p.Scan()
		if err != nil || len(got) != 0 {
			t.Fatalf("Scan = %v, %v; want nothing and no error", got, err)
		}
	})
}

func TestCgroupLineMatchesPickCgroup(t *testing.T) {
	for _, data := range []string{
		"0::/\n",
		"0::/a:b/c\n",
		fixtureHybridCgroup,
		"5:cpu,freezer,memory:/v1/path\n0::/v2/path\n",
		"5:freezer:/only/v1\n",
		"0::/no/newline",
		"",
	} {
		for _, v1 := range []bool{false, true} {
			p := newFixture(t, v1, fakeProc{pid: 5, comm: "x", state: 'S', ppid: 1,
				flags: userFlags, start: 1, cmdline: "x\x00", exe: "/x", cgroup: data})
			want, werr := p.Cgroup(5)
			got, ok := procstat.CgroupPath([]byte(data), v1)
			if ok != (werr == nil) || string(got) != want {
				t.Errorf("CgroupPath(%q, v1=%v) = %q, %v; pickCgroup %q, %v", data, v1, got, ok, want, werr)
			}
		}
	}
	// Where procfs refuses the whole file, Scan still finds the line.
	if got, ok := procstat.CgroupPath([]byte("garbage\n0::/after-garbage\n"), false); !ok || string(got) != "/after-garbage" {
		t.Errorf("CgroupPath after a bad line = %q, %v", got, ok)
	}
}

// boottime reads CLOCK_BOOTTIME, the clock of Born and Start.
func boottime(t testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// startSleep starts a sleep of the test's own and ends it when the test does.
func startSleep(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func newRealProcfs(t testing.TB) *Procfs {
	t.Helper()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		testtool.Skip(t, "no /proc: %v", err)
	}
	p, err := NewProcfs("/proc", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Cgroup(os.Getpid()); err != nil {
		// A pure cgroup v1 node has none (README: Tests).
		t.Skipf("no cgroup v2 line on this node: %v", err)
	}
	return p
}

func TestScanReal(t *testing.T) {
	p := newRealProcfs(t)
	before := boottime(t)
	cmd := startSleep(t, "1000", "0.5")
	after := boottime(t)
	pid := cmd.Process.Pid

	procs, err := p.Scan()
	if err != nil {
		t.Fatal(err)
	}
	var got *node.Process
	for i := range procs {
		if procs[i].PID == pid {
			got = &procs[i]
		}
		if procs[i].Exe == "" && len(procs[i].Args) == 0 && !procs[i].Zombie { // a zombie has neither
			t.Errorf("Scan listed %+v: no exe and no args (a kernel thread?)", procs[i])
		}
		if i > 0 && procs[i-1].PID >= procs[i].PID {
			t.Errorf("Scan not ordered by PID: %d before %d", procs[i-1].PID, procs[i].PID)
		}
	}
	if got == nil {
		t.Fatalf("Scan (%d processes) did not list the test's sleep %d", len(procs), pid)
	}
	if got.PPID != os.Getpid() || got.Comm != "sleep" || !reflect.DeepEqual(got.Args, []string{"sleep", "1000", "0.5"}) {
		t.Errorf("sleep = %+v; want PPID %d, comm sleep, args [sleep 1000 0.5]", *got, os.Getpid())
	}
	path, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	wantExe, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Exe != wantExe {
		t.Errorf("Exe = %q, want %q", got.Exe, wantExe)
	}
	wantCg, err := p.Cgroup(os.Getpid()) // a child starts in its parent's cgroup
	if err != nil {
		t.Fatal(err)
	}
	if got.Cgroup != wantCg {
		t.Errorf("Cgroup = %q, want %q", got.Cgroup, wantCg)
	}
	// starttime counts in 10 ms ticks, truncated.
	const slack = 20 * time.Millisecond
	if got.Born < before-slack || got.Born > after+slack || got.Start != got.Born {
		t.Errorf("Born = %v, Start = %v; the sleep started between %v and %v (boot time)", got.Born, got.Start, before, after)
	}
	t.Logf("sleep %d: born %v, started between %v and %v; %d processes", pid, got.Born, before, after, len(procs))

	one, err := p.Process(pid)
	if err != nil || !reflect.DeepEqual(one, *got) {
		t.Errorf("Process(%d) = %+v, %v; Scan said %+v", pid, one, err, *got)
	}

	// PID 2 is kthreadd when the test shares the node's PID namespace.
	if comm, err := os.ReadFile("/proc/2/comm"); err == nil && strings.TrimSpace(string(comm)) == "kthreadd" {
		for _, proc := range procs {
			if proc.PID == 2 || proc.PPID == 2 {
				t.Errorf("Scan listed kernel thread %+v", proc)
			}
		}
		if _, err := p.Process(2); !errors.Is(err, ErrKernelThread) {
			t.Errorf("Process(2) error = %v, want ErrKernelThread", err)
		}
	}
}

func TestScanRealZombieAndExit(t *testing.T) {
	p := newRealProcfs(t)
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start sleep: %v", err)
	}
	pid := cmd.Process.Pid
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	// Killed and not yet reaped: a zombie.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if s, err := procstat.ParseStat(st); err == nil && s.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep %d never became a zombie", pid)
		}
		time.Sleep(time.Millisecond)
	}
	procs, err := p.Scan()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, proc := range procs {
		if proc.PID == pid {
			found = true
			if !proc.Zombie || proc.Comm != "sleep" || proc.PPID != os.Getpid() || proc.Exe != "" {
				t.Errorf("zombie listed as %+v, want Zombie with comm and ppid only", proc)
			}
		} else if proc.Zombie && proc.PPID == os.Getpid() {
			t.Errorf("a process of ours that is not a zombie listed as one: %+v", proc)
		}
	}
	if !found {
		t.Errorf("Scan did not list zombie %d", pid)
	}
	if _, err := p.Process(pid); !errors.Is(err, ErrGone) {
		t.Errorf("Process(zombie %d) error = %v, want ErrGone", pid, err)
	}
	var born time.Duration
	for _, proc := range procs {
		if proc.PID == pid {
			born = proc.Born
		}
	}
	if p.Reaped(pid, born) {
		t.Error("Reaped says yes for a zombie")
	}
	if !p.Reaped(pid, born+time.Second) {
		t.Error("Reaped says no for another start time (a reused PID)")
	}
	_ = cmd.Wait()
	reaped = true
	if _, err := p.Process(pid); !errors.Is(err, ErrGone) {
		t.Errorf("Process(reaped %d) error = %v, want ErrGone", pid, err)
	}
	if !p.Reaped(pid, born) {
		t.Error("Reaped says no for a reaped process")
	}
}

// spawnSleeps starts n sleeps in a process group of their own, waits until
// they all run, and kills that group (and only it) when the benchmark ends.
func spawnSleeps(b *testing.B, p *Procfs, n int) {
	b.Helper()
	sh := exec.Command("sh", "-c", `i=0; while [ $i -lt "$1" ]; do sleep 600 & i=$((i+1)); done; wait`, "sh", strconv.Itoa(n))
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sh.Start(); err != nil {
		b.Fatalf("cannot start sh: %v", err)
	}
	b.Cleanup(func() {
		_ = syscall.Kill(-sh.Process.Pid, syscall.SIGKILL)
		_ = sh.Wait()
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		procs, err := p.Scan()
		if err != nil {
			b.Fatal(err)
		}
		children := 0
		for _, proc := range procs {
			if proc.PPID == sh.Process.Pid {
				children++
			}
		}
		if children >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d sleeps started in 2 minutes", children, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func BenchmarkScan(b *testing.B) {
	p, err := NewProcfs("/proc", false)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Cgroup(os.Getpid()); err != nil {
		// A pure cgroup v1 node has none (README: Tests).
		b.Skipf("no cgroup v2 line on this node: %v", err)
	}
	run := func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			procs, err := p.Scan()
			if err != nil {
				b.Fatal(err)
			}
			n = len(procs)
		}
		b.ReportMetric(float64(n), "procs")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/proc")
	}
	b.Run("node", run)
	b.Run("5000more", func(b *testing.B) {
		spawnSleeps(b, p, 5000)
		run(b)
	})
}

func TestScanLongFields(t *testing.T) {
	long := strings.Repeat("a", 9000)
	exe := "/" + strings.Repeat("d/", 400) + "restic"
	cg := "/" + strings.Repeat("c.slice/", 700) + "x.scope"
	p := newFixture(t, false, fakeProc{pid: 5, comm: "restic", state: 'S', ppid: 1,
		flags: userFlags, start: 1, cmdline: "restic\x00" + long + "\x00b\x00", exe: exe, cgroup: "0::" + cg + "\n"})
	got, err := p.Process(5)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Args, []string{"restic", long, "b"}) || got.Exe != exe || got.Cgroup != cg {
		t.Errorf("Process(5) = args of %d, exe of %d, cgroup of %d bytes; want %d, %d, %d",
			len(strings.Join(got.Args, "")), len(got.Exe), len(got.Cgroup), len(long)+7, len(exe), len(cg))
	}

	// The kernel gives a long cmdline whole, too.
	real := newRealProcfs(t)
	// A shell that waits on a pipe until the test ends keeps any argument.
	zeros := strings.Repeat("0", 9000)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "read _", "sh", zeros)
	cmd.Stdin = pr
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start sh: %v", err)
	}
	pr.Close()
	t.Cleanup(func() { pw.Close(); _ = cmd.Wait() })
	proc, err := real.Process(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"sh", "-c", "read _", "sh", zeros}; !reflect.DeepEqual(proc.Args, want) {
		t.Errorf("Process(sh).Args has %d elements of %d bytes: %+v", len(proc.Args), len(strings.Join(proc.Args, "")), proc)
	}
}
