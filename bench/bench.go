package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
)

// bench is one run of the suite: the binary under test, a scratch
// directory with the fake engines, the cgroup every measured process lives
// in, and everything started, so that all of it is ended at close.
type bench struct {
	bin   string // absolute path of the overtime binary
	quick bool
	// heapProfile: where the memory target saves the agent's heap profile.
	heapProfile string
	// load: how many CPU hogs the load target runs beside its kills.
	load int
	// nofile is RLIMIT_NOFILE, which the agents inherit.
	nofile   uint64
	tmp      string  // scratch directory: engines, configs, agent logs
	cg       *cgroup // nil where the node has none for the bench: noCgroup says why
	noCgroup error
	r        *reaper
	out      *output

	mu     sync.Mutex
	agents []*agent
	// closing ends everything once; a second close (the signal handler's
	// beside main's deferred one) waits for it, so the process cannot
	// exit with the cleanup half done and leave the bench cgroup behind.
	closing sync.Once
}

func newBench(bin string, quick bool) (*bench, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("agent binary: %w (run make build)", err)
	}
	nofile, err := raiseLimits()
	if err != nil {
		return nil, err
	}
	b := &bench{bin: abs, quick: quick, nofile: nofile, out: &output{w: os.Stdout}}
	if b.tmp, err = os.MkdirTemp("", "overtime-bench-"); err != nil {
		return nil, err
	}
	// Without a cgroup of its own the bench runs its bare targets only.
	b.cg, b.noCgroup = newCgroup(fmt.Sprintf("overtime-bench-%d", os.Getpid()))
	if b.r, err = newReaper(); err != nil {
		b.cg.remove()
		os.RemoveAll(b.tmp)
		return nil, err
	}
	if err := b.writeEngines(); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// raiseLimits lifts the open-file limit as far as it may go: the bench
// holds a pidfd per process it starts, and the agent (which inherits the
// limit) holds a pidfd per tracked process plus two descriptors per tree
// (its root directory and mount namespace). Without CAP_SYS_RESOURCE only
// the soft limit can rise, to the hard one. It returns the limit in force.
func raiseLimits() (uint64, error) {
	want := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
			want = n
		}
	}
	lim := unix.Rlimit{Cur: want, Max: want}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// needPIDs checks that the node has room for n more processes.
func needPIDs(n int) error {
	for _, f := range []string{"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		max, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if used := countProcs(); max-used < n+1000 {
			return fmt.Errorf("%s is %d with %d processes running: no room for %d more", f, max, used, n)
		}
	}
	return nil
}

func countProcs() int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	return n
}

// The fake engines: scripts and copies of sleep whose comm is their name,
// so rules can match them by comm like a real backup engine.
const (
	engBench = "ovt-bench" // short-lived script: the matching storm
	engKill  = "ovt-kill"  // script with a sleep child: a two-process tree
	engKill4 = "ovt-kill4" // script with three sleep children: a four-process tree
	engSleep = "ovt-sleep" // a copy of sleep: a one-process tree
	engPoll  = "ovt-poll"  // a copy of sleep, for the procfs poller
	engMass  = "ovt-mass"  // a copy of sleep, for the mass deadline
	engStall = "ovt-stall" // a copy of sleep, for the cost of stall sampling
)

func (b *bench) engine(name string) string { return filepath.Join(b.tmp, name) }

func (b *bench) writeEngines() error {
	scripts := map[string]string{
		engBench: "#!/bin/sh\nexit 0\n",
		// sh forks sleep and waits: the tree is the script and its child.
		engKill:  "#!/bin/sh\nsleep 3600\nexit 0\n",
		engKill4: "#!/bin/sh\nsleep 3600 &\nsleep 3600 &\nsleep 3600 &\nwait\n",
	}
	for name, body := range scripts {
		if err := os.WriteFile(b.engine(name), []byte(body), 0o755); err != nil {
			return err
		}
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return err
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		return err
	}
	for _, name := range []string{engSleep, engPoll, engMass, engStall, engPpid} {
		if err := os.WriteFile(b.engine(name), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// runTarget runs one target in a cgroup of its own and ends everything it
// started, whatever happened.
func (b *bench) runTarget(t target) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
		if cerr := b.endTarget(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return t.run(b)
}

// endTarget stops the agents still running (they give their trees back),
// then kills every process left in the bench cgroup and removes its
// sub-cgroups.
func (b *bench) endTarget() error {
	b.mu.Lock()
	agents := b.agents
	b.agents = nil
	b.mu.Unlock()
	var errs []error
	for _, a := range agents {
		a.stop()
	}
	if b.cg == nil {
		b.r.killAll()
	} else if err := b.cg.killAll(); err != nil {
		errs = append(errs, err)
	}
	if !b.r.waitIdle(10 * time.Second) {
		errs = append(errs, fmt.Errorf("%d started processes not reaped 10s after kill", b.r.live()))
	}
	if err := b.cg.removeChildren(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// close ends everything and removes the cgroup and scratch directory.
func (b *bench) close() {
	b.closing.Do(func() {
		if err := b.endTarget(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
		b.r.close()
		if err := b.cg.remove(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
		os.RemoveAll(b.tmp)
	})
}

// subCgroup makes a child of the bench cgroup and a launcher starting
// processes directly inside it (clone3 CLONE_INTO_CGROUP); without a bench
// cgroup (a bare target), a launcher starting them in the bench's own.
func (b *bench) subCgroup(name string) (*launcher, error) {
	if b.cg == nil {
		return newLauncher("", "", b.r, b.tmp)
	}
	dir, err := b.cg.mkdir(name)
	if err != nil {
		return nil, err
	}
	return newLauncher(dir, b.cg.pathOf(dir), b.r, b.tmp)
}

func (b *bench) header() {
	w := b.out.w
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	ver, _ := exec.Command(b.bin, "version").Output()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintln(w, "==================================================================================")
	fmt.Fprintln(w, " overtime benchmark suite (issue 8)")
	fmt.Fprintf(w, " binary  %s  %s\n", b.bin, strings.TrimSpace(strings.ReplaceAll(string(ver), "\n", " ")))
	cg := "no bench cgroup: " + fmt.Sprint(b.noCgroup)
	if b.cg != nil {
		cg = "cgroup v2 at " + b.cg.root
	}
	fmt.Fprintf(w, " node    Linux %s, %d CPUs, %s RAM, %s, %s\n",
		unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), memTotal(), runtime.Version(), cg)
	fmt.Fprintf(w, " load    %s", load)
	fmt.Fprintf(w, " limits  RLIMIT_NOFILE %d (inherited by the agents), pid_max %s, threads-max %s\n",
		b.nofile, readTrim("/proc/sys/kernel/pid_max"), readTrim("/proc/sys/kernel/threads-max"))
	if others := foreignAgents(); len(others) > 0 {
		fmt.Fprintf(w, " WARNING %d other overtime process(es) run on this node (pids %v): they load the CPU,\n"+
			"         and every agent that starts adopts or releases all overtime.* cgroups; figures are noisier\n",
			len(others), others)
	}
	fmt.Fprintln(w, " lines   NAME VALUE (target) VERDICT: OK or MISS against the issue's target, info for")
	fmt.Fprintln(w, "         baselines; figures are medians of repeated runs on this noisy machine")
	fmt.Fprintln(w, "==================================================================================")
}

func (b *bench) footer(d time.Duration) {
	fmt.Fprintf(b.out.w, "---- bench done in %s: %d OK, %d MISS, %d errors\n",
		d.Round(time.Second), b.out.ok, b.out.miss, b.out.errs)
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func memTotal() string {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f GiB", float64(si.Totalram)*float64(si.Unit)/(1<<30))
}

// foreignAgents lists overtime processes this bench did not start.
func foreignAgents() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if strings.TrimSpace(string(comm)) == "overtime" {
			out = append(out, pid)
		}
	}
	return out
}

// output prints the result lines.
type output struct {
	mu             sync.Mutex
	w              io.Writer
	ok, miss, errs int
}

const lineFormat = "%-38s %-18s (%s) %s\n"

// check prints a figure against its target.
func (o *output) check(name, value, tgt string, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	verdict := "OK"
	if ok {
		o.ok++
	} else {
		o.miss++
		verdict = "MISS"
	}
	fmt.Fprintf(o.w, lineFormat, name, value, "target "+tgt, verdict)
}

// info prints a baseline or a detail that has no target.
func (o *output) info(name, value, note string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, lineFormat, name, value, note, "info")
}

// note prints a free-text line about the target just run.
func (o *output) note(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, "  # "+format+"\n", args...)
}

func (o *output) section(title string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, "-- %s\n", title)
}

func (o *output) errorLine(name string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errs++
	fmt.Fprintf(o.w, lineFormat, name, "-", "hard error: "+strings.ReplaceAll(err.Error(), "\n", "; "), "ERROR")
}

// sleepUntil sleeps until the boot clock reads t.
func sleepUntil(t time.Duration) {
	if d := t - bpf.BootNow(); d > 0 {
		time.Sleep(d)
	}
}
