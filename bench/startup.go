package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"overtime/bpf"
	"overtime/internal/treename"
)

// startUp: the time from `overtime run` to /readyz 200 on the default
// rules, on the node as it is and with 5,000 extra processes on it (the
// start-up procfs scan reads every process).
func startUp(b *bench) error {
	extra, reps := 5000, 5
	if b.quick {
		extra, reps = 2000, 3
	}
	b.out.section(fmt.Sprintf("5. start-up: overtime run → /readyz 200, default rules, %d runs each", reps))
	if err := needPIDs(extra); err != nil {
		return err
	}
	l, err := b.subCgroup("startup")
	if err != nil {
		return err
	}
	measure := func(tag string) ([]time.Duration, error) {
		var ds []time.Duration
		for i := range reps {
			a, err := b.startAgent(fmt.Sprintf("startup-%s-%d", tag, i), "")
			if err != nil {
				return nil, err
			}
			d, err := a.waitReady(20*time.Second, 2*time.Millisecond)
			a.stop()
			if err != nil {
				return nil, err
			}
			ds = append(ds, d)
		}
		return ds, nil
	}
	base, err := measure("base")
	if err != nil {
		return err
	}
	began := time.Now()
	for range extra {
		if _, err := l.start("/bin/sleep", "3600"); err != nil {
			return err
		}
	}
	spawned := time.Since(began)
	with, err := measure("extra")
	if err != nil {
		return err
	}
	total := countProcs()
	b.out.info("startup_ready_base", ms(medianDur(base)), fmt.Sprintf("median, %d processes on the node", total-extra))
	med := medianDur(with)
	b.out.check("startup_ready_5k", ms(med), fmt.Sprintf("≤ 1 s, median with %d extra processes (%d in all)", extra, total), med <= time.Second)
	sort.Slice(with, func(i, j int) bool { return with[i] < with[j] })
	b.out.note("runs with the extra processes: %v; they took %v to start", roundAll(with), spawned.Round(time.Millisecond))
	return nil
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// idle: the agent's CPU over a stretch of an idle node, on the default
// rules (the kernel drops every exec on the node; the loop wakes once a
// second to check the lost counter).
func idle(b *bench) error {
	d := 30 * time.Second
	if b.quick {
		d = 10 * time.Second
	}
	b.out.section(fmt.Sprintf("6. idle: agent CPU over %v, default rules", d))
	a, err := b.runAgent("idle", "")
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	t0, s0, err := a.cpu()
	if err != nil {
		return err
	}
	cs0 := wakeups(a.pid())
	w0 := bpf.BootNow()
	time.Sleep(d)
	t1, s1, err := a.cpu()
	if err != nil {
		return err
	}
	wall := bpf.BootNow() - w0
	pct := float64(t1-t0) / float64(wall) * 100
	b.out.check("idle_cpu", fmt.Sprintf("%.3f%%", pct), "≤ 0.1% of a core, utime+stime", pct <= 0.1)
	b.out.info("idle_cpu_schedstat", fmt.Sprintf("%.3f%%", float64(s1-s0)/float64(wall)*100),
		fmt.Sprintf("%v on CPU in %v, threads' schedstat (ns)", (s1-s0).Round(time.Microsecond), wall.Round(time.Millisecond)))
	b.out.info("idle_wakeups", fmt.Sprintf("%.1f /s", float64(wakeups(a.pid())-cs0)/wall.Seconds()),
		"voluntary context switches of the agent's threads")
	return nil
}

// wakeups sums the voluntary context switches of the agent's threads.
func wakeups(pid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	n := 0
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var v int
			if _, err := fmt.Sscanf(line, "voluntary_ctxt_switches: %d", &v); err == nil {
				n += v
			}
		}
	}
	return n
}

// massDeadline: 500 one-process trees that share one deadline to the
// nanosecond. A tree's deadline is its root's exec time plus the timeout,
// and 500 execs cannot happen in the same instant, so the trees are made
// the way a restarted agent finds them: each process in a cgroup named
// overtime.<rule>.<pid>.<exec ns>, all with the same exec ns, adopted at
// start with that deadline. All must be dead within 1 s of deadline +
// grace, and the kills should come from one wake-up of the timer heap.
func massDeadline(b *bench) error {
	n := 500
	timeout := 10 * time.Second
	b.out.section(fmt.Sprintf("7. mass deadline: %d trees (%s) adopted with one shared deadline, SIGKILL grace 0s", n, engMass))
	l, err := b.subCgroup("mass")
	if err != nil {
		return err
	}
	kids := make([]*child, 0, n)
	for range n {
		c, err := l.start(b.engine(engMass), "3600")
		if err != nil {
			return err
		}
		kids = append(kids, c)
	}
	deadline := bpf.BootNow() + 4*time.Second
	execNs := deadline - timeout
	for _, c := range kids {
		dir, err := b.cg.mkdir(filepath.Join("mass", treename.Format("ovt-mass", c.pid, execNs)))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(c.pid)), 0); err != nil {
			return fmt.Errorf("move pid %d to its tree cgroup: %w", c.pid, err)
		}
	}
	cfg := fmt.Sprintf(`rules:
  - name: ovt-mass
    match: {comm: [%s]}
    timeout: %s
    kill: {signal: SIGKILL, grace: 0s}
`, engMass, timeout)
	a, err := b.runAgent("mass", cfg)
	if err != nil {
		return err
	}
	m, err := a.metrics()
	if err != nil {
		return err
	}
	if got := m.Get(`overtime_tracked_processes{rule="ovt-mass"}`); got != float64(n) {
		return fmt.Errorf("agent adopted %.0f of %d trees", got, n)
	}
	if bpf.BootNow() > deadline {
		return fmt.Errorf("agent was ready only after the shared deadline")
	}
	var lat []time.Duration
	limit := time.Now().Add(deadline - bpf.BootNow() + 15*time.Second)
	for _, c := range kids {
		select {
		case <-c.done:
		case <-time.After(time.Until(limit)):
			return fmt.Errorf("pid %d alive 15s after the shared deadline", c.pid)
		}
		lat = append(lat, c.exitAt-deadline)
	}
	worst := percentile(lat, 1)
	b.out.check("mass_deadline_all_dead", ms(worst), fmt.Sprintf("≤ 1 s, last of %d exits after deadline + grace", n), worst <= time.Second)
	b.out.info("mass_deadline_p50_exit", ms(percentile(lat, 0.5)), "median exit after the deadline")

	// One wake-up: the kills are logged back to back, from the first at
	// the deadline to the last, with no gap a second wake-up would leave.
	kills := a.logs("killed the tree")
	if len(kills) != n {
		b.out.note("%d 'killed the tree' log lines, want %d", len(kills), n)
	}
	if len(kills) > 0 {
		sort.Slice(kills, func(i, j int) bool { return kills[i].Time().Before(kills[j].Time()) })
		// The boot clock and the wall clock differ by a constant here.
		offset := time.Duration(time.Now().UnixNano()) - bpf.BootNow()
		first := time.Duration(kills[0].Time().UnixNano()) - offset - deadline
		var gap time.Duration
		for i := 1; i < len(kills); i++ {
			gap = max(gap, kills[i].Time().Sub(kills[i-1].Time()))
		}
		span := kills[len(kills)-1].Time().Sub(kills[0].Time())
		b.out.info("mass_deadline_first_kill", ms(first), "first kill after the deadline (timer wake-up)")
		b.out.info("mass_deadline_kill_span", ms(span), fmt.Sprintf("first to last of %d kills; widest gap %s", len(kills), ms(gap)))
	}
	procs, _, err := a.waitEmpty(5*time.Second, 100*time.Millisecond)
	if err != nil {
		return err
	}
	b.out.check("mass_deadline_table_after", fmt.Sprintf("%d processes", len(procs)), "0", len(procs) == 0)
	return nil
}
