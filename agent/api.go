package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"overtime/internal/node"
)

// ProcessInfo is one tracked process, as /api/v1/processes shows it.
type ProcessInfo struct {
	PID            int       `json:"pid"`
	PPID           int       `json:"ppid"`
	Rule           string    `json:"rule"`
	Comm           string    `json:"comm"`
	Args           []string  `json:"args"`
	Exe            string    `json:"exe"`
	Cgroup         string    `json:"cgroup"`
	PodUID         string    `json:"pod_uid"`
	ContainerID    string    `json:"container_id"`
	StartedAt      time.Time `json:"started_at"`
	Deadline       time.Time `json:"deadline"`
	RuntimeSeconds float64   `json:"runtime_seconds"`
	// LastProgress and StalledSeconds are set on the root of a tree whose
	// rule has a stall: the last sample that saw the tree read or write a
	// byte or use 1% of a CPU (or when tracking began), and the time since.
	LastProgress   *time.Time `json:"last_progress"`
	StalledSeconds float64    `json:"stalled_seconds"`
	State          State      `json:"state"`
	// Blocked says what an unkillable process waits for in the kernel.
	Blocked      *node.Blocked `json:"blocked,omitempty"`
	Orphaned     bool          `json:"orphaned"`
	OpenFiles    []string      `json:"open_files"`
	CreatedFiles []string      `json:"created_files"`
}

// wallNow is the wall clock, for API times.
func (a *Agent) wallNow() time.Time { return time.Now() }

// wall converts a boot-time instant to wall-clock time.
func (a *Agent) wall(t time.Duration) time.Time {
	return a.wallNow().Add(t - a.clock.Now()).Round(time.Millisecond)
}

// Processes returns the tracked processes, by PID.
func (a *Agent) Processes() []ProcessInfo {
	a.mu.RLock()
	now := a.clock.Now()
	out := make([]ProcessInfo, 0, len(a.procs))
	for _, p := range a.procs {
		t := p.tree
		end := now
		if p.exited {
			end = p.exitAt
		}
		info := ProcessInfo{
			PID: p.PID, PPID: p.PPID, Rule: t.rule.Name, Comm: p.Comm, Args: p.Args, Exe: p.Exe,
			Cgroup: p.Cgroup, PodUID: p.podUID, ContainerID: p.containerID,
			StartedAt: a.wall(p.Start), Deadline: a.wall(t.deadline),
			RuntimeSeconds: (end - p.Start).Seconds(), State: p.state(), Orphaned: p.orphaned,
			OpenFiles: []string{}, CreatedFiles: []string{}, Blocked: p.blocked,
		}
		if p.PID == t.rootPID && t.rule.Stall > 0 && a.prog != nil {
			lp := a.wall(t.lastProgress)
			info.LastProgress = &lp
			info.StalledSeconds = max(0, end-t.lastProgress).Seconds()
		}
		for _, c := range t.created {
			// Each process lists what it created; the root also lists what
			// members that are gone created, so nothing the tree made is
			// out of sight.
			creator, live := a.procs[c.pid]
			if c.pid == p.PID || (p.PID == t.rootPID && (!live || creator.tree != t)) {
				info.CreatedFiles = append(info.CreatedFiles, c.path)
			}
		}
		sort.Strings(info.CreatedFiles)
		out = append(out, info)
	}
	a.mu.RUnlock()
	// Open files are read from procfs outside the lock.
	for i := range out {
		if out[i].State == StateZombie || out[i].State == StateExited {
			continue
		}
		if files, err := a.src.OpenFiles(out[i].PID); err == nil && files != nil {
			out[i].OpenFiles = files
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// Actions returns the last actions, oldest first.
func (a *Agent) Actions() []Action {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.actions.list()
}

// tableStats is a snapshot of the table for the metrics collector.
type tableStats struct {
	rules                               []string
	tracked, overdue, orphaned, zombies map[string]int
	unkillable                          map[string]int
	overdueProcs                        []overdueProc
}

type overdueProc struct {
	rule, comm, podUID, containerID string
	pid                             int
}

func (a *Agent) stats() tableStats {
	a.mu.RLock()
	defer a.mu.RUnlock()
	s := tableStats{
		tracked: map[string]int{}, overdue: map[string]int{},
		orphaned: map[string]int{}, zombies: map[string]int{},
		unkillable: map[string]int{},
	}
	seen := map[string]bool{}
	for _, r := range a.cfg.Rules {
		s.rules = append(s.rules, r.Name)
		seen[r.Name] = true
	}
	for _, p := range a.procs {
		r := p.tree.rule.Name
		if !seen[r] {
			seen[r] = true
			s.rules = append(s.rules, r)
		}
		if p.exited {
			if p.zombie {
				s.zombies[r]++
			}
			continue
		}
		s.tracked[r]++
		if p.orphaned {
			s.orphaned[r]++
		}
		if p.unkillable {
			s.unkillable[r]++
		}
		if p.tree.overdue {
			s.overdue[r]++
			s.overdueProcs = append(s.overdueProcs, overdueProc{rule: r, pid: p.PID, comm: p.Comm, podUID: p.podUID, containerID: p.containerID})
		}
	}
	return s
}

// Handler serves /metrics, the health probes and the read-only API.
func (a *Agent) Handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !a.Alive(r.Context(), 5*time.Second) {
			http.Error(w, "event loop not responding", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready: eBPF programs or first procfs scan pending", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /api/v1/processes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.Processes())
	})
	mux.HandleFunc("GET /api/v1/actions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.Actions())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Alive reports whether the event loop answers within timeout.
func (a *Agent) Alive(ctx context.Context, timeout time.Duration) bool {
	reply := make(chan struct{})
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case a.pings <- reply:
	case <-ctx.Done():
		return false
	}
	select {
	case <-reply:
		return true
	case <-ctx.Done():
		return false
	}
}
