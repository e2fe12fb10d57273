package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/internal/procstat"
)

// loadRounds is how many rounds killUnderLoad runs (see there).
const loadRounds = 3

// killUnderLoad: the kill tail with the CPU busy. The kill of 1,000
// two-process trees (as in target 3) and of 10,000 processes (as in
// target 4), each once without and once with b.load CPU hogs running
// beside it: processes of their own, each one thread spinning, in a
// cgroup of the bench, started before the run's agent and stopped once
// its table drained. Every run has an agent of its own. As with the
// cleanup target, one p99 on a 2-CPU machine swings between runs, so the
// target runs loadRounds rounds; the figures checked are the medians of
// the rounds' p99 with hogs, deadline to the tree's last exit on the
// kernel's clock (the agent's log: the bench seeing an exit through its
// pidfd waits for a CPU beside the hogs too), and the ratios printed beside them the
// medians of the rounds' ratios of the p99 with hogs to the p99 without,
// measured just before.
func killUnderLoad(b *bench) error {
	if b.load <= 0 {
		b.out.section("11. kill latency under CPU load: off (-load 0)")
		return nil
	}
	n, spreadOver, rounds := 1000, 3*time.Second, loadRounds
	if b.quick {
		n, rounds = 300, 1
	}
	// Target 3's trees, with more room for their start to fall behind its
	// pace under the hogs (every tree is tracked before the first
	// deadline); the deadlines still come after the last start.
	timeout := spreadOver + 8*time.Second
	k := newKill10k(b)
	b.out.section(fmt.Sprintf("11. kill latency under CPU load: %d trees (%s) over %v, and %d processes in trees of %d (%s) over %v, each without then with %d CPU hogs; rounds: %d",
		n, engKill, spreadOver, k.procs, k.per, filepath.Base(k.argv[0]), k.spreadOver, b.load, rounds))
	if err := needPIDs(max(2*n, k.procs) + b.load); err != nil {
		return err
	}
	hl, err := b.subCgroup("load-hogs")
	if err != nil {
		return err
	}
	type kind struct {
		name, short string // figure prefix; cgroup prefix
		target      time.Duration
		run         func(cg string) (*killResult, error)
		base, with  []float64 // per-round p99s, ns
		ratios      []float64
		hogCPU      []float64 // per hog and run, share of a core
	}
	kinds := []*kind{
		{name: "kill_1k", short: "1k", target: 10 * time.Millisecond, run: func(cg string) (*killResult, error) {
			return runKillBatch(b, cg, killConfig(timeout), n, spreadOver, timeout)
		}},
		{name: "kill_10k", short: "10k", target: 15 * time.Millisecond, run: func(cg string) (*killResult, error) {
			return k.run(b, cg)
		}},
	}
	for r := 1; r <= rounds; r++ {
		for _, kd := range kinds {
			base, err := kd.run(fmt.Sprintf("load%s-r%d-base", kd.short, r))
			if err != nil {
				return fmt.Errorf("%s round %d without hogs: %w", kd.name, r, err)
			}
			loadNotes(b, kd.name+" without hogs", base)
			h, err := startHogs(b, hl, b.load)
			if err != nil {
				return err
			}
			with, err := kd.run(fmt.Sprintf("load%s-r%d-hogs", kd.short, r))
			cpu := h.stop()
			if err != nil {
				return fmt.Errorf("%s round %d with %d hogs: %w", kd.name, r, b.load, err)
			}
			loadNotes(b, fmt.Sprintf("%s with %d hogs", kd.name, b.load), with)
			// The figure checked is on the kernel's clock: the exit as the
			// bench sees it (its pidfd) comes after the dying process's
			// memory teardown, and counts the bench's own wait for a CPU
			// beside the hogs; it is printed for comparison.
			p0, p1 := percentile(base.gone, 0.99), percentile(with.gone, 0.99)
			if p0 <= 0 || p1 <= 0 {
				return fmt.Errorf("%s round %d: no kill latency in the agent's log (p99 %v without hogs, %v with)", kd.name, r, p0, p1)
			}
			kd.base, kd.with = append(kd.base, float64(p0)), append(kd.with, float64(p1))
			kd.ratios = append(kd.ratios, float64(p1)/float64(p0))
			kd.hogCPU = append(kd.hogCPU, cpu...)
			shares := make([]string, len(cpu))
			for i, c := range cpu {
				shares[i] = fmt.Sprintf("%.0f%%", 100*c)
			}
			b.out.info(fmt.Sprintf("%s_load%d_r%d", kd.name, b.load, r), fmt.Sprintf("%.2f / %.2f ms", msf(p0), msf(p1)),
				fmt.Sprintf("p99 deadline → tree gone without / with %d hogs, %.2fx; SIGKILL sent p99 %s / %s (%d / %d by the kill thread); exit seen by the bench p99 %s / %s; hogs %s of a core",
					b.load, float64(p1)/float64(p0), ms(percentile(base.sent, 0.99)), ms(percentile(with.sent, 0.99)), len(base.sent), len(with.sent),
					ms(percentile(base.lat, 0.99)), ms(percentile(with.lat, 0.99)), strings.Join(shares, ", ")))
		}
	}
	for _, kd := range kinds {
		m0, m1, ratio := time.Duration(median(kd.base)), time.Duration(median(kd.with)), median(kd.ratios)
		b.out.check(fmt.Sprintf("%s_p99_load%d", kd.name, b.load), ms(m1),
			fmt.Sprintf("≤ %.0f ms, median of %s p99 with %d CPU hogs (%s ms)", msf(kd.target), roundsOf(rounds), b.load, spread(scaled(kd.with, 1/float64(time.Millisecond)), "%.2f")),
			m1 <= kd.target)
		b.out.info(kd.name+"_load_ratio", fmt.Sprintf("%.2fx", ratio),
			fmt.Sprintf("median of %s p99 with / without hogs (%s); median p99 without %s", roundsOf(rounds), spread(kd.ratios, "%.2fx"), ms(m0)))
	}
	var all []float64
	for _, kd := range kinds {
		all = append(all, kd.hogCPU...)
	}
	b.out.note("hogs: %d processes a hogged run, each one spinning thread, %s of a core each by utime+stime over its life (%d CPUs)",
		b.load, spread(scaled(all, 100), "%.0f%%"), runtime.NumCPU())
	if lo := slices.Min(all); lo < 0.5*min(1, float64(runtime.NumCPU())/float64(b.load+1)) {
		b.out.note("a hog got only %.0f%% of a core: the CPU was not as loaded as asked", 100*lo)
	}
	return nil
}

// loadNotes prints, for one unreported run of the load target, what the
// full report would have flagged: roots that did not die as killed, and a
// table that did not drain.
func loadNotes(b *bench, what string, k *killResult) {
	if k.early+k.unnamed+k.notKilled > 0 {
		b.out.note("%s: %d exited before their deadline, %d without a tree cgroup name (fork time used), %d not ended by SIGKILL",
			what, k.early, k.unnamed, k.notKilled)
	}
	if len(k.left) > 0 {
		b.out.note("%s: %d processes left in the table %v after the kills: %s", what, len(k.left), k.drain.Round(100*time.Millisecond), stateCounts(k.left))
	}
}

// roundsOf is "N rounds'" (or "1 round's"), for the notes.
func roundsOf(n int) string {
	if n == 1 {
		return "1 round's"
	}
	return fmt.Sprintf("%d rounds'", n)
}

// scaled is xs, each times k (ns to ms, shares to percent), for the notes.
func scaled(xs []float64, k float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = k * x
	}
	return out
}

// hogs are the CPU hogs of one run: the bench re-executed as hogCmd, in
// the launcher's cgroup (so the bench's cleanup ends them whatever
// happens).
type hogs struct {
	b    *bench
	kids []*child
}

// hogLife bounds a hog's life should the bench not end it: longer than
// any run of the load target.
const hogLife = 10 * time.Minute

func startHogs(b *bench, l *launcher, n int) (*hogs, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	h := &hogs{b: b}
	for range n {
		c, err := l.start(self, hogCmd, hogLife.String())
		if err != nil {
			h.stop()
			return nil, err
		}
		h.kids = append(h.kids, c)
	}
	return h, nil
}

// stop reads each hog's CPU time (utime + stime), kills it and waits for
// its exit. It returns each hog's share of a core over its life (0 for a
// hog already gone: it did not load the CPU through the run).
func (h *hogs) stop() []float64 {
	shares := make([]float64, len(h.kids))
	now := bpf.BootNow()
	for i, c := range h.kids {
		h.b.r.ifLive(c, func() {
			if st, err := procstat.ReadStat("/proc", c.pid); err == nil && now > c.execd {
				shares[i] = float64(procstat.TicksToBoot(st.UTime+st.STime)) / float64(now-c.execd)
			}
		})
	}
	for _, c := range h.kids {
		_ = h.b.r.signal(c, unix.SIGKILL)
	}
	for _, c := range h.kids {
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
		}
	}
	return shares
}

// hogCmd is the hidden subcommand the bench re-executes itself as to load
// the CPU: `bench cpu-hog DURATION` spins one thread for DURATION at most.
const hogCmd = "cpu-hog"

var hogSink uint64

func cpuHog(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: cpu-hog DURATION")
		return 2
	}
	d, err := time.ParseDuration(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	runtime.GOMAXPROCS(1)
	until := time.Now().Add(d)
	x := uint64(1)
	for time.Now().Before(until) {
		for range 1 << 20 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		hogSink = x
	}
	return 0
}
