package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	ovagent "overtime/agent"
	"overtime/internal/procstat"
)

// agent is an overtime agent the bench started (in the bench's own cgroup,
// not among the measured processes).
type agent struct {
	cmd     *exec.Cmd
	addr    string
	logPath string
	logFile *os.File
	done    chan struct{}
	began   time.Time
	http    *http.Client
}

// startAgent runs `overtime run` with config (empty: the embedded default
// rules, no --config) and does not wait for it to be ready.
func (b *bench) startAgent(name, config string, extra ...string) (*agent, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	a := &agent{addr: addr, done: make(chan struct{}), http: &http.Client{Timeout: 30 * time.Second},
		logPath: filepath.Join(b.tmp, name+".log")}
	args := []string{"run", "--listen", addr, "--log-format", "json"}
	if config != "" {
		cfg := filepath.Join(b.tmp, name+".yaml")
		if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "--config", cfg)
	}
	args = append(args, extra...)
	if a.logFile, err = os.Create(a.logPath); err != nil {
		return nil, err
	}
	a.cmd = exec.Command(b.bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logFile, a.logFile
	a.began = time.Now()
	if err := a.cmd.Start(); err != nil {
		a.logFile.Close()
		return nil, err
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
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

func (a *agent) pid() int { return a.cmd.Process.Pid }

// waitReady polls /readyz every poll and returns the time from the start
// of the agent's process to the first 200.
func (a *agent) waitReady(timeout, poll time.Duration) (time.Duration, error) {
	c := &http.Client{Timeout: time.Second}
	deadline := a.began.Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return 0, fmt.Errorf("agent exited before ready: %s", a.tail(20))
		default:
		}
		resp, err := c.Get("http://" + a.addr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(a.began), nil
			}
		}
		time.Sleep(poll)
	}
	return 0, fmt.Errorf("agent not ready in %v: %s", timeout, a.tail(20))
}

// stop ends the agent gracefully (SIGTERM: it gives its trees back).
func (a *agent) stop() {
	select {
	case <-a.done:
	default:
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(20 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	}
	a.logFile.Close()
}

// tail returns the last n lines of the agent's log.
func (a *agent) tail(n int) string {
	b, _ := os.ReadFile(a.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (a *agent) get(path string) ([]byte, error) {
	resp, err := a.http.Get("http://" + a.addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// metrics is one scrape of /metrics: value by series, exactly as exposed
// (`name{label="v",...}`).
type metrics map[string]float64

func (a *agent) metrics() (metrics, error) {
	body, err := a.get("/metrics")
	if err != nil {
		return nil, err
	}
	m := metrics{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, nil
}

// get returns a series' value, 0 when absent.
func (m metrics) get(series string) float64 { return m[series] }

// quantile estimates the q-quantile of a histogram the way Prometheus's
// histogram_quantile does: linear within the bucket it falls in. sel is
// the label selector of the series without le (e.g. `rule="x"`).
func (m metrics) quantile(name, sel string, q float64) (float64, bool) {
	type bucket struct{ le, n float64 }
	var bs []bucket
	prefix := name + "_bucket{" + sel + ",le=\""
	if sel == "" {
		prefix = name + "_bucket{le=\""
	}
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			le := strings.TrimSuffix(rest, "\"}")
			f, err := strconv.ParseFloat(le, 64)
			if le == "+Inf" {
				f, err = math.Inf(1), nil
			}
			if err == nil {
				bs = append(bs, bucket{f, v})
			}
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return 0, false
	}
	rank := q * bs[len(bs)-1].n
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.n >= rank {
			if math.IsInf(b.le, 1) {
				return lo, true
			}
			if b.n == below {
				return b.le, true
			}
			return lo + (b.le-lo)*(rank-below)/(b.n-below), true
		}
		lo, below = b.le, b.n
	}
	return lo, true
}

// apiProcess is the agent's API type.
type apiProcess = ovagent.ProcessInfo

func (a *agent) processes() ([]apiProcess, error) {
	body, err := a.get("/api/v1/processes")
	if err != nil {
		return nil, err
	}
	var out []apiProcess
	return out, json.Unmarshal(body, &out)
}

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
type logRecord map[string]any

func (r logRecord) str(k string) string { s, _ := r[k].(string); return s }

func (r logRecord) time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, r.str("time"))
	return t
}

// logs returns the agent's log records whose msg is msg ("" for all).
func (a *agent) logs(msg string) []logRecord {
	f, err := os.Open(a.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if msg != "" && !strings.Contains(string(line), `"msg":"`+msg) {
			continue
		}
		var r logRecord
		if json.Unmarshal(line, &r) == nil && (msg == "" || r.str("msg") == msg) {
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
