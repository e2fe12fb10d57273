package main

import (
	"fmt"
	"runtime"
	"syscall"
	"time"
)

// engPpid is a copy of sleep: the one tracked engine of the getppid target.
const engPpid = "ovt-ppid"

// getppidRatio: what a tracked engine costs every other process's
// syscalls (issue 17). A getppid loop's rate with one engine tracked,
// against the same agent idle (1.00), side by side in one run: rounds
// alternate idle and tracked. In tracepoint mode the file syscall
// tracepoints are attached while the engine is tracked, and every syscall
// of every task takes the tracing path; in fentry mode nothing on the
// getppid path changes. The target (>= 0.98) is for fentry mode; where the
// kernel refuses fentry the ratio is reported for information. Where the
// agent runs fentry, a second agent forced onto the tracepoints follows in
// the same run: the cost fentry spares, and proof the loop sees a cost.
func getppidRatio(b *bench) error {
	rounds, window := 9, 500*time.Millisecond
	if b.quick {
		rounds, window = 3, 300*time.Millisecond
	}
	b.out.section(fmt.Sprintf("9. getppid loop with one engine tracked vs an idle agent (%d rounds of %v each)", rounds, window))
	l, err := b.subCgroup("getppid")
	if err != nil {
		return err
	}
	r, err := getppidRounds(b, l, "getppid", rounds, window)
	if err != nil {
		return err
	}
	b.out.info("getppid_idle_agent", fmt.Sprintf("%.2f M/s", r.idle/1e6), "1.00: an agent running, nothing tracked")
	b.out.info("getppid_one_tracked", fmt.Sprintf("%.2f M/s", r.tracked/1e6), "one engine tracked, file tracing "+r.mode)
	name, value := "getppid_ratio_"+r.mode, fmt.Sprintf("%.3f", r.ratio)
	if r.mode != "fentry" {
		b.out.info(name, value, "the 0.98 target is for fentry mode; this kernel refuses it")
		b.out.note("per-round ratios %s (median of per-round tracked/idle pairs; each rate the fastest of ten slices)", spread(r.ratios, "%.3f"))
		return nil
	}
	b.out.check(name, value, ">= 0.98", r.ratio >= 0.98)
	b.out.note("per-round ratios %s (median of per-round tracked/idle pairs; each rate the fastest of ten slices)", spread(r.ratios, "%.3f"))
	t, err := getppidRounds(b, l, "getppid-tracepoint", rounds, window, "--file-tracing", "tracepoint")
	if err != nil {
		return err
	}
	b.out.info("getppid_ratio_tracepoint", fmt.Sprintf("%.3f", t.ratio), fmt.Sprintf("same run, --file-tracing tracepoint: %.2f vs %.2f M/s", t.tracked/1e6, t.idle/1e6))
	b.out.note("per-round ratios %s", spread(t.ratios, "%.3f"))
	return nil
}

// ppidRun is one agent's getppid rounds: the medians, and the mode its
// file tracing ran in.
type ppidRun struct {
	mode                 string
	idle, tracked, ratio float64
	ratios               []float64
}

// getppidRounds starts an agent (extra: its flags) tracking engPpid and
// runs rounds of the getppid loop, each idle then with one engine tracked.
func getppidRounds(b *bench, l *launcher, name string, rounds int, window time.Duration, extra ...string) (ppidRun, error) {
	var r ppidRun
	a, err := b.runAgent(name, fmt.Sprintf(`mode: enforce
rules:
  - name: ovt-ppid
    match: {comm: [%s]}
    timeout: 1h
`, engPpid), append([]string{"--file-tracing-idle", "1s"}, extra...)...)
	if err != nil {
		return r, err
	}
	defer a.stop()
	m, err := a.metrics()
	if err != nil {
		return r, err
	}
	r.mode = "unknown"
	for _, md := range []string{"fentry", "tracepoint"} {
		if m.Get(`overtime_file_tracing_mode{mode="`+md+`"}`) == 1 {
			r.mode = md
		}
	}
	tracing := func(tracked float64) func(metrics) bool {
		return func(m metrics) bool {
			return m.Get(`overtime_tracked_processes{rule="ovt-ppid"}`) == tracked && m.Get("overtime_file_tracing") == tracked
		}
	}
	// settle lets the agent finish what a change started (tracking an
	// exec: its cgroup, pidfds, procfs reads; in tracepoint mode, closing
	// the links about a second after file tracing went off), the same
	// time in both phases: on a one-CPU guest that work would run in the
	// measuring window of one phase only.
	settle := func() { time.Sleep(2 * time.Second) }
	idle := func() error {
		if _, err := a.waitMetric(20*time.Second, tracing(0)); err != nil {
			return fmt.Errorf("agent not idle: %w", err)
		}
		settle()
		return nil
	}
	if err := idle(); err != nil {
		return r, err
	}
	var idleRates, trackedRates, ratios []float64
	for range rounds {
		ri := getppidRate(window)
		c, err := l.start(b.engine(engPpid), "3600")
		if err != nil {
			return r, err
		}
		if _, err := a.waitMetric(10*time.Second, tracing(1)); err != nil {
			return r, fmt.Errorf("engine not tracked: %w", err)
		}
		settle()
		rt := getppidRate(window)
		if err := b.r.signal(c, syscall.SIGKILL); err != nil {
			return r, err
		}
		<-c.done
		if err := idle(); err != nil {
			return r, err
		}
		idleRates = append(idleRates, ri)
		trackedRates = append(trackedRates, rt)
		ratios = append(ratios, rt/ri)
	}
	r.idle, r.tracked, r.ratio, r.ratios = median(idleRates), median(trackedRates), median(ratios), ratios
	return r, nil
}

// getppidRate runs getppid in a loop on one locked thread for d, in ten
// slices, and returns the calls per second of the fastest slice: on a
// shared machine a slice in which the loop was descheduled says nothing
// about the syscall. RawSyscall: no scheduler hooks around the call, the
// loop is the syscall.
func getppidRate(d time.Duration) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	best := 0.0
	for range 10 {
		n := 0
		t0 := time.Now()
		var el time.Duration
		for {
			for range 1024 {
				syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
			}
			n += 1024
			if el = time.Since(t0); el >= d/10 {
				break
			}
		}
		best = max(best, float64(n)/el.Seconds())
	}
	return best
}
