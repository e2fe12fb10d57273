package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/internal/procstat"
)

// killConfig is a rule whose trees are SIGKILLed through their cgroup at
// the deadline (grace 0): kill latency is then the time from the deadline
// to the exit of the tree.
func killConfig(timeout time.Duration) string {
	return fmt.Sprintf(`limits: {max_tracked_processes: 30000}
rules:
  - name: ovt-kill
    match: {comm: [%s, %s, %s]}
    timeout: %s
    kill: {signal: SIGKILL, grace: 0s}
`, engKill, engKill4, engSleep, timeout)
}

// killRun is one batch of trees started for an agent to kill.
type killRun struct {
	children []*child
	execAt   map[int]time.Duration // root pid → exec time, from the tree cgroup names
}

// startKillRun starts n trees over spread, waits until the agent tracks
// `members` processes of them, and reads their exec times.
func startKillRun(a *agent, l *launcher, n, members int, spread, timeout time.Duration, argv ...string) (*killRun, error) {
	// Tree cgroups are read while they exist: another agent on the node
	// may release one (see the header) before the bench lists it.
	names := map[int]time.Duration{}
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			found := treeCgroups(l.dir)
			mu.Lock()
			for pid, at := range found {
				names[pid] = at
			}
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	first := bpf.BootNow()
	kids, err := l.startPaced(n, spread, argv...)
	if err != nil {
		return nil, err
	}
	// Every tree must be tracked before the first deadline: wait at most
	// until a second before it.
	wait := first + timeout - time.Second - bpf.BootNow()
	if _, err := a.waitMetric(wait, func(m metrics) bool {
		return m.Get(`overtime_tracked_processes{rule="ovt-kill"}`) >= float64(members)
	}); err != nil {
		return nil, fmt.Errorf("trees not all tracked before the first deadline: %w", err)
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	for pid, at := range treeCgroups(l.dir) {
		names[pid] = at
	}
	return &killRun{children: kids, execAt: names}, nil
}

// latencies waits for every root to exit and returns, for each, the time
// from its deadline (exec + timeout + grace, exec read from the tree
// cgroup's name) to its exit, seen through its pidfd.
func (k *killRun) latencies(timeout time.Duration, wait time.Duration) (lat []time.Duration, early, unnamed, notKilled int, err error) {
	deadline := time.Now().Add(wait)
	for _, c := range k.children {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline)):
			return nil, 0, 0, 0, fmt.Errorf("pid %d still alive %v after its deadline", c.pid, wait)
		}
		exec, ok := k.execAt[c.pid]
		if !ok {
			unnamed++
			exec = c.forked // conservative: the deadline can only be later
		}
		d := c.exitAt - (exec + timeout)
		if d < 0 {
			early++
			continue
		}
		if !c.status.Signaled() || c.status.Signal() != syscall.SIGKILL {
			notKilled++
		}
		lat = append(lat, d)
	}
	return lat, early, unnamed, notKilled, nil
}

// killLatency: 1,000 two-process trees (a script and its sleep child) with
// deadlines spread over 3 s, killed by overtime; then the same number of
// processes ended by a naive 1 s procfs poller, measured the same way.
func killLatency(b *bench) error {
	n, spreadOver := 1000, 3*time.Second
	if b.quick {
		n = 300
	}
	timeout := spreadOver + 3*time.Second
	b.out.section(fmt.Sprintf("3. kill latency: %d trees (%s script + sleep child), deadlines spread over %v, SIGKILL grace 0s", n, engKill, spreadOver))
	if err := needPIDs(2 * n); err != nil {
		return err
	}
	lat, err := killBatch(b, "kill", "kill_1k", killConfig(timeout), n, spreadOver, timeout)
	if err != nil {
		return err
	}

	// The naive alternative, without an agent.
	pl, err := b.subCgroup("poll")
	if err != nil {
		return err
	}
	plat, err := pollerRun(b, pl, n, spreadOver, timeout)
	if err != nil {
		return err
	}
	p50, p99 := percentile(plat, 0.5), percentile(plat, 0.99)
	b.out.info("kill_poller_1s_p50", ms(p50), "naive procfs poller every 1 s, same processes count")
	b.out.info("kill_poller_1s_p99", ms(p99), fmt.Sprintf("max %s", ms(percentile(plat, 1))))
	if ovt := percentile(lat, 0.5); ovt > 0 {
		b.out.info("kill_speedup_vs_poller_p50", fmt.Sprintf("%.0fx", float64(p50)/float64(ovt)), "poller p50 / overtime p50")
	}
	return nil
}

// killBatch runs n two-process trees with deadlines over spreadOver under
// an agent of its own with config, in a cgroup named cg, and returns their
// kill latencies, reported under name.
func killBatch(b *bench, cg, name, config string, n int, spreadOver, timeout time.Duration) ([]time.Duration, error) {
	k, err := runKillBatch(b, cg, config, n, spreadOver, timeout)
	if err != nil {
		return nil, err
	}
	return k.report(b, name), nil
}

// runKillBatch is killBatch without the report.
func runKillBatch(b *bench, cg, config string, n int, spreadOver, timeout time.Duration) (*killResult, error) {
	l, err := b.subCgroup(cg)
	if err != nil {
		return nil, err
	}
	a, err := b.runAgent(cg, config)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	run, err := startKillRun(a, l, n, 2*n, spreadOver, timeout, b.engine(engKill))
	if err != nil {
		return nil, err
	}
	return collectKill(a, run, timeout, timeout+spreadOver+15*time.Second)
}

// killResult is what a kill run leaves: the kill latencies, the agent's
// metrics once the roots are gone, and what its table still held after
// the drain.
type killResult struct {
	lat                       []time.Duration
	m                         metrics
	early, unnamed, notKilled int
	left                      []apiProcess
	drain                     time.Duration
	// From the agent's log: each tree's deadline to its last member's
	// exit, both on the kernel's clock (tree ended, kill_latency), and the
	// deadline to the SIGKILL sent by the kill thread (kill_delay).
	gone, sent []time.Duration
}

// finishKill waits up to wait for every root of run to exit, reports the
// kill latencies under name, checks that the agent's table drains, and
// returns the latencies.
func finishKill(b *bench, a *agent, run *killRun, name string, timeout, wait time.Duration) ([]time.Duration, error) {
	k, err := collectKill(a, run, timeout, wait)
	if err != nil {
		return nil, err
	}
	return k.report(b, name), nil
}

// collectKill waits up to wait for every root of run to exit, reads the
// agent's metrics, and waits for its table to drain.
func collectKill(a *agent, run *killRun, timeout, wait time.Duration) (*killResult, error) {
	lat, early, unnamed, notKilled, err := run.latencies(timeout, wait)
	if err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond) // let the last exit events land
	m, err := a.metrics()
	if err != nil {
		return nil, err
	}
	// Killed members stay in the table until their parent reaps them;
	// orphans wait for PID 1.
	procs, drain, err := a.waitEmpty(15*time.Second, 100*time.Millisecond)
	if err != nil {
		return nil, err
	}
	res := &killResult{lat: lat, m: m, early: early, unnamed: unnamed, notKilled: notKilled, left: procs, drain: drain}
	res.gone = logDurations(a.logs("tree ended"), "kill_latency")
	res.sent = logDurations(a.logs("killed the tree"), "kill_delay")
	return res, nil
}

// logDurations reads the duration field of each record that has it.
func logDurations(recs []logRecord, field string) []time.Duration {
	var out []time.Duration
	for _, r := range recs {
		if d, err := time.ParseDuration(r.Str(field)); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// report prints the figures of k under name (reportKill, and the table
// after the drain) and returns its latencies.
func (k *killResult) report(b *bench, name string) []time.Duration {
	reportKill(b, name, k.lat, k.m, k.early, k.unnamed, k.notKilled)
	b.out.check(name+"_table_after", fmt.Sprintf("%d processes", len(k.left)),
		fmt.Sprintf("0, drained in %v (orphans wait for PID 1 to reap them)", k.drain.Round(100*time.Millisecond)), len(k.left) == 0)
	if len(k.left) > 0 {
		b.out.note("left in the table: %s", stateCounts(k.left))
	}
	return k.lat
}

// reportKill prints the latency figures of one batch: measured by the
// bench (deadline from the tree cgroup name, exit from the pidfd) and as
// the agent's own histogram says.
func reportKill(b *bench, name string, lat []time.Duration, m metrics, early, unnamed, notKilled int) {
	p50, p99, pmax := percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)
	b.out.info(name+"_p50", ms(p50), fmt.Sprintf("deadline → exit, %d trees, seen by the bench", len(lat)))
	b.out.check(name+"_p99", ms(p99), "≤ 10 ms", p99 <= 10*time.Millisecond && len(lat) > 0)
	b.out.info(name+"_max", ms(pmax), "slowest tree")
	q50, ok1 := m.Quantile("overtime_kill_latency_seconds", `rule="ovt-kill"`, 0.5)
	q99, ok2 := m.Quantile("overtime_kill_latency_seconds", `rule="ovt-kill"`, 0.99)
	if ok1 && ok2 {
		b.out.info(name+"_agent_histogram", fmt.Sprintf("%s / %s", ms(time.Duration(q50*1e9)), ms(time.Duration(q99*1e9))),
			fmt.Sprintf("p50 / p99 of overtime_kill_latency_seconds, %.0f trees", m.Get(`overtime_kill_latency_seconds_count{rule="ovt-kill"}`)))
	}
	if early+unnamed+notKilled > 0 {
		b.out.note("%d exited before their deadline, %d without a tree cgroup name (fork time used), %d not ended by SIGKILL",
			early, unnamed, notKilled)
	}
}

// pollerRun starts n single processes and ends them with a simulated
// procfs poller: every second it lists /proc, reads each process's comm
// and start time, and SIGKILLs those past start + timeout. It signals only
// processes this bench started (through their pidfds).
func pollerRun(b *bench, l *launcher, n int, spreadOver, timeout time.Duration) ([]time.Duration, error) {
	mine := map[int]*child{}
	var mu sync.Mutex
	stop := make(chan struct{})
	starts := map[int]time.Duration{}
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			now := bpf.BootNow()
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				comm, start, ok := procStat(pid)
				if !ok || comm != engPoll || now < start+timeout {
					continue
				}
				mu.Lock()
				c := mine[pid]
				if c != nil {
					starts[pid] = start
				}
				mu.Unlock()
				if c != nil {
					b.r.signal(c, unix.SIGKILL)
				}
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	kids := make([]*child, 0, n)
	begin := bpf.BootNow()
	for i := range n {
		sleepUntil(begin + spreadOver*time.Duration(i)/time.Duration(n))
		c, err := l.start(b.engine(engPoll), "3600")
		if err != nil {
			return nil, err
		}
		mu.Lock()
		mine[c.pid] = c
		mu.Unlock()
		kids = append(kids, c)
	}
	var lat []time.Duration
	deadline := time.Now().Add(timeout + spreadOver + 10*time.Second)
	for _, c := range kids {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline)):
			return nil, fmt.Errorf("poller: pid %d still alive", c.pid)
		}
		mu.Lock()
		start := starts[c.pid]
		mu.Unlock()
		lat = append(lat, c.exitAt-(start+timeout))
	}
	return lat, nil
}

// procStat reads comm and start time (boot clock, clock-tick resolution)
// from /proc/PID/stat.
func procStat(pid int) (string, time.Duration, bool) {
	st, err := procstat.ReadStat("/proc", pid)
	if err != nil {
		return "", 0, false
	}
	return string(st.Comm), procstat.TicksToBoot(st.Start), true
}

// memoryAndKill10k: 10,000 tracked processes started over 8 s: the
// agent's RSS once it tracks them all against its RSS idle, then their
// kill latency as their deadlines come. The trees are newKill10k's.
func memoryAndKill10k(b *bench) error {
	k := newKill10k(b)
	b.out.section(fmt.Sprintf("4. memory and kill latency at scale: %d processes in %d trees of %d (%s) started over %v",
		k.procs, k.n, k.per, filepath.Base(k.argv[0]), k.spreadOver))
	if k.per > 1 {
		b.out.note("RLIMIT_NOFILE is %d and cannot be raised here (no CAP_SYS_RESOURCE): %d one-process trees would need %d descriptors in the agent",
			b.nofile, k.procs, 4*k.procs)
	}
	if err := needPIDs(k.procs); err != nil {
		return err
	}
	l, a, err := k.agent(b, "memory", "--pprof")
	if err != nil {
		return err
	}
	time.Sleep(time.Second)
	rss0, err := a.rss()
	if err != nil {
		return err
	}
	run, err := k.start(a, l)
	if err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	rss1, err := a.rss()
	if err != nil {
		return err
	}
	heap := a.heapInuse()
	if b.heapProfile != "" {
		if body, err := a.get("/debug/pprof/heap"); err == nil {
			if err := os.WriteFile(b.heapProfile, body, 0o644); err != nil {
				b.out.note("heap profile: %v", err)
			}
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.pid()))
	b.out.info("memory_rss_idle", mib(rss0), "agent VmRSS before the trees")
	if g, err := a.guardRSS(); err == nil {
		b.out.info("memory_rss_hold_guard", mib(g), "VmRSS of the agent's hold guard process")
	} else {
		b.out.note("hold guard RSS: %v", err)
	}
	b.out.check("memory_rss_10k", mib(rss1), fmt.Sprintf("≤ 40 MiB, VmRSS tracking %d processes", k.procs), rss1 <= 40<<20)
	b.out.info("memory_bytes_per_process", fmt.Sprintf("%.0f B", float64(rss1-rss0)/float64(k.procs)), "(RSS delta) / processes")
	if heap > 0 {
		b.out.info("memory_go_heap_inuse", mib(heap), "runtime HeapInuse, from /debug/pprof/heap")
	}
	b.out.info("memory_agent_fds", strconv.Itoa(len(fds)), "open descriptors (pidfds, root, mount ns, parent watch)")
	if anon, file, ring, err := a.rssParts(); err == nil {
		b.out.info("memory_rss_parts", fmt.Sprintf("%s/%s/%s", mib(anon), mib(file), mib(ring)),
			"anon / file-backed / of which the ring buffer's double mapping")
	}

	res, err := k.collect(a, run)
	if err != nil {
		return err
	}
	res.report(b, "kill_10k")
	return nil
}

// kill10k is the shape of the 10,000-process kill run on this machine,
// shared by the memory target and the load target: procs processes in n
// trees of per, argv each, started over spreadOver, killed timeout after
// their start.
type kill10k struct {
	procs, per, n       int
	argv                []string
	spreadOver, timeout time.Duration
}

// newKill10k: one-process trees (a copy of sleep) when the open-file limit
// lets the agent hold four descriptors a tree (member pidfd, root, mount
// namespace, parent watch); otherwise four-process trees (a script and
// three sleeps), which need 7 a tree.
func newKill10k(b *bench) kill10k {
	procs, spreadOver := 10000, 8*time.Second
	if b.quick {
		procs, spreadOver = 2000, 3*time.Second
	}
	per, argv := 1, []string{b.engine(engSleep), "3600"}
	if b.nofile < uint64(4*procs+2000) {
		per, argv = 4, []string{b.engine(engKill4)}
	}
	// Room for the start to fall behind its pace on a loaded node: the
	// first deadline must come after the last tree is tracked.
	timeout := spreadOver + 20*time.Second
	return kill10k{procs: procs, per: per, n: procs / per, argv: argv, spreadOver: spreadOver, timeout: timeout}
}

// agent makes the cgroup cg and starts an agent of its own with the kill
// rule (extra: its flags), ready.
func (k kill10k) agent(b *bench, cg string, extra ...string) (*launcher, *agent, error) {
	l, err := b.subCgroup(cg)
	if err != nil {
		return nil, nil, err
	}
	a, err := b.runAgent(cg, killConfig(k.timeout), extra...)
	if err != nil {
		return nil, nil, err
	}
	return l, a, nil
}

// start starts the trees in l and waits until a tracks them all.
func (k kill10k) start(a *agent, l *launcher) (*killRun, error) {
	return startKillRun(a, l, k.n, k.procs, k.spreadOver, k.timeout, k.argv...)
}

// collect waits for the kills of run and the drain of a's table.
func (k kill10k) collect(a *agent, run *killRun) (*killResult, error) {
	return collectKill(a, run, k.timeout, k.timeout+k.spreadOver+30*time.Second)
}

// run is one whole 10,000-process kill run in the cgroup cg, under an
// agent of its own, unreported.
func (k kill10k) run(b *bench, cg string) (*killResult, error) {
	l, a, err := k.agent(b, cg)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	run, err := k.start(a, l)
	if err != nil {
		return nil, err
	}
	return k.collect(a, run)
}

// rssParts splits the agent's RSS: anonymous memory, file-backed
// (its text and the eBPF map mappings), and the part of it that is the
// ring buffer (bpf-map mappings: its data pages are mapped twice).
func (a *agent) rssParts() (anon, file, ring int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", a.pid()))
	if err != nil {
		return 0, 0, 0, err
	}
	bpfMap := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			bpfMap = len(f) >= 6 && f[5] == "anon_inode:bpf-map"
			continue
		}
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "Anonymous:":
				anon += kb << 10
			case "Rss:":
				if bpfMap {
					ring += kb << 10
				}
			}
		}
	}
	total, err := a.rss()
	return anon, total - anon, ring, err
}

// heapInuse reads HeapInuse from the agent's /debug/pprof/heap?debug=1
// (it needs --pprof); 0 when unavailable.
func (a *agent) heapInuse() int64 {
	body, err := a.get("/debug/pprof/heap?debug=1")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			return v
		}
	}
	return 0
}
