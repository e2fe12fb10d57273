package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	ovagent "overtime/agent"
	"overtime/internal/agentproc"
	"overtime/internal/procstat"
)

// agent is an overtime agent the bench started (in the bench's own cgroup,
// not among the measured processes), driven through agentproc.
type agent struct {
	*agentproc.Agent
}

// startAgent runs `overtime run` with config (empty: the embedded default
// rules, no --config) and does not wait for it to be ready. Its log goes to
// a file in the scratch directory.
func (b *bench) startAgent(name, config string, extra ...string) (*agent, error) {
	o := agentproc.Options{Binary: b.bin, Args: extra, LogFile: filepath.Join(b.tmp, name+".log")}
	if config != "" {
		o.Config = filepath.Join(b.tmp, name+".yaml")
		if err := os.WriteFile(o.Config, []byte(config), 0o644); err != nil {
			return nil, err
		}
	}
	p, err := agentproc.Start(o)
	if err != nil {
		return nil, err
	}
	a := &agent{p}
	b.mu.Lock()
	b.agents = append(b.agents, a)
	b.mu.Unlock()
	return a, nil
}

// runAgent starts an agent and waits until /readyz answers 200.
func (b *bench) runAgent(name, config string, extra ...string) (*agent, error) {
	a, err := b.startAgent(name, config, extra...)
	if err != nil {
		return nil, err
	}
	if _, err := a.waitReady(20*time.Second, 20*time.Millisecond); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *agent) pid() int { return a.PID() }

// waitReady polls /readyz every poll and returns the time from the start
// of the agent's process to the first 200.
func (a *agent) waitReady(timeout, poll time.Duration) (time.Duration, error) {
	return a.WaitReady(timeout, poll)
}

// stop ends the agent gracefully (SIGTERM: it gives its trees back).
func (a *agent) stop() { _, _ = a.Stop(20 * time.Second) }

func (a *agent) get(path string) ([]byte, error) { return a.Get(path) }

// metrics is one scrape of /metrics.
type metrics = agentproc.Metrics

func (a *agent) metrics() (metrics, error) { return a.Metrics() }

// apiProcess is the agent's API type.
type apiProcess = ovagent.ProcessInfo

func (a *agent) processes() ([]apiProcess, error) { return a.Processes() }

// waitEmpty reads the agent's table every poll until it is empty or limit
// has passed, and returns what is left and how long it waited. A read that
// fails is tried again; the error is returned only if none succeeded.
func (a *agent) waitEmpty(limit, poll time.Duration) ([]apiProcess, time.Duration, error) {
	began := time.Now()
	var left []apiProcess
	var lastErr error
	read := false
	for {
		procs, err := a.processes()
		if err == nil {
			left, read = procs, true
		}
		lastErr = err
		if (err == nil && len(procs) == 0) || time.Since(began) >= limit {
			break
		}
		time.Sleep(poll)
	}
	if !read {
		return nil, time.Since(began), lastErr
	}
	return left, time.Since(began), nil
}

// stateCounts summarises processes by state, for a note.
func stateCounts(ps []apiProcess) string {
	n := map[string]int{}
	for _, p := range ps {
		n[string(p.State)+"/"+p.Comm]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, n[k])
	}
	return strings.Join(parts, ", ")
}

// logRecord is one JSON log line of the agent.
type logRecord = agentproc.Record

// logs returns the agent's log records whose msg is msg ("" for all).
func (a *agent) logs(msg string) []logRecord {
	var out []logRecord
	for _, r := range a.Records(msg) {
		if msg == "" || r.Str("msg") == msg {
			out = append(out, r)
		}
	}
	return out
}

// rss reads the agent's resident set size in bytes.
func (a *agent) rss() (int64, error) { return rssOf(a.pid()) }

// guardRSS reads the resident set size of the agent's hold guard (the
// child process `overtime hold-guard`).
func (a *agent) guardRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", a.pid(), a.pid()))
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if args := strings.Split(string(cmd), "\x00"); len(args) > 1 && args[1] == "hold-guard" {
			return rssOf(pid)
		}
	}
	return 0, fmt.Errorf("no hold guard among the agent's children")
}

func rssOf(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// cpu reads the agent's CPU time: utime+stime of /proc/PID/stat (clock
// ticks, every thread, live and exited) and the sum of the threads' run
// time in /proc/PID/task/*/schedstat (nanoseconds, live threads only).
func (a *agent) cpu() (ticks time.Duration, sched time.Duration, err error) {
	st, err := procstat.ReadStat("/proc", a.pid())
	if err != nil {
		return 0, 0, err
	}
	ticks = time.Duration(st.UTime+st.STime) * procstat.Tick
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", a.pid()))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if fs := strings.Fields(string(b)); len(fs) > 0 {
			ns, _ := strconv.ParseInt(fs[0], 10, 64)
			sched += time.Duration(ns)
		}
	}
	return ticks, sched, nil
}

// waitMetric polls /metrics until cond holds, at most d.
func (a *agent) waitMetric(d time.Duration, cond func(metrics) bool) (metrics, error) {
	deadline := time.Now().Add(d)
	for {
		m, err := a.metrics()
		if err == nil && cond(m) {
			return m, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("condition not met in %v", d)
			}
			return m, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// foreignReleases counts the tree cgroups of other agents this agent
// released at start (another agent runs on the node).
func (a *agent) foreignReleases() int {
	return len(a.logs("releasing tree cgroup of an unknown rule"))
}
