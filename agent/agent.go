// Package agent decides. It holds the config and its rules, the table of
// tracked process trees and their deadlines, the event loop, the metrics and
// the HTTP API. It reads the node only through a Source and changes it only
// through an Enforcer, so the whole decision core runs in a unit test with
// fakes and an injected clock.
package agent

import (
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Clock reads the boot-time clock (CLOCK_BOOTTIME): deadlines are on it, so
// they count time the node spent suspended and survive agent restarts.
type Clock interface {
	Now() time.Duration
}

// Options are the parts and settings an Agent is built from.
type Options struct {
	Config   *Config
	Source   Source
	Enforcer Enforcer
	// Progress samples trees for stall detection and diagnoses unkillable
	// processes (nil: neither is done).
	Progress Progress
	// Unmounter runs on_unkillable: force_unmount (nil: it is not run).
	Unmounter Unmounter
	Clock     Clock
	Logger    *slog.Logger
	Registry  prometheus.Registerer
	Build     BuildInfo
	// Self is the agent's own PID, never tracked (0: os.Getpid()).
	Self int
	// FilesIdle is how long nothing is tracked before the file tracepoints
	// are detached (0: DefaultFilesIdle).
	FilesIdle time.Duration
	// KillAlarm rings the kill thread, which then calls KillsDue (nil: the
	// loop sends every kill itself; see killer.go).
	KillAlarm KillAlarm
	// FileTracingMode is how the kernel side records file changes
	// ("fentry" or "tracepoint"), exported as overtime_file_tracing_mode
	// (empty: not exported).
	FileTracingMode string
}

// cleanupNice is the niceness of the cleanup worker's thread: the lowest,
// a small share of the CPU beside busy normal threads (it still goes on:
// a stale lock left behind blocks the next backup), the whole CPU when
// nothing else runs.
const cleanupNice = 19

// DefaultFilesIdle is Options.FilesIdle's default.
const DefaultFilesIdle = 30 * time.Second

// Agent is the decision core and its event loop.
type Agent struct {
	src   Source
	enf   Enforcer
	prog  Progress
	unm   Unmounter
	clock Clock
	log   *slog.Logger
	m     *Metrics
	self  int

	killer *killer // nil: no kill thread

	// mu guards everything below: the loop writes, HTTP handlers and the
	// metrics collector read.
	mu      sync.RWMutex
	cfg     *Config
	procs   map[int]*proc
	trees   map[string]*tree
	running map[string]int // live trees by rule, for max_running
	timers  timers
	actions *actionLog

	files fileTracing // the file tracepoints (see filetrace.go)

	// Progress sampling (see stall.go): trees due for the next pass, a
	// pass in flight, a timerPass queued, when the last pass started.
	due                           []*tree
	passBusy, passArmed, passEver bool
	lastPass                      time.Duration

	// Work done off the loop comes back on back (see work.go).
	back    chan result
	workers sync.WaitGroup
	done    chan struct{} // closed when Run returns

	// Cleanups run one after another off the loop; cleaning counts those
	// not done yet.
	cleanups serial
	cleaning sync.WaitGroup

	// A resync's scan is in flight: the loop reads no events until it is
	// applied (resyncAgain: events were lost again meanwhile).
	resyncing, resyncAgain bool

	// Members due for a zombie check in this tick.
	zombieDue []zombieCheck

	// Confinements, and the calls ordered with them, run off the loop
	// (see confine.go).
	confines serial

	// Tree cgroups are removed off the loop (see release).
	releases  serial
	releasing sync.WaitGroup

	// The last procfs scan (start-up or resync): records read after it
	// may be older than it (see stale). scanned holds the start time of
	// each process it saw alive, until no record older than it can come.
	scanAt  time.Duration
	scanned map[int]time.Duration

	ready   atomic.Bool
	pings   chan chan struct{}
	reloads chan *Config
}

// New builds an agent; it does nothing until Run.
func New(o Options) *Agent {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Self == 0 {
		o.Self = os.Getpid()
	}
	if o.FilesIdle <= 0 {
		o.FilesIdle = DefaultFilesIdle
	}
	a := &Agent{
		src:     o.Source,
		enf:     o.Enforcer,
		prog:    o.Progress,
		unm:     o.Unmounter,
		clock:   o.Clock,
		log:     o.Logger,
		self:    o.Self,
		cfg:     o.Config,
		procs:   map[int]*proc{},
		trees:   map[string]*tree{},
		running: map[string]int{},
		actions: newActionLog(512),
		files:   fileTracing{on: o.Source.FilesEnabled(), idle: o.FilesIdle},
		pings:   make(chan chan struct{}),
		reloads: make(chan *Config, 1),
		back:    make(chan result, backlog),
		done:    make(chan struct{}),
	}
	if o.KillAlarm != nil {
		a.killer = &killer{alarm: o.KillAlarm, kill: a.killCgroup, now: o.Clock.Now}
	}
	// Cleanups run beside kills (a node's backups often time out
	// together): on a busy node their filesystem round trips, and the
	// file server's, take a CPU from the processes being killed, whose
	// exit is the kill's latency.
	a.cleanups.nice = cleanupNice
	a.m = NewMetrics(o.Registry, o.Build)
	if o.FileTracingMode != "" {
		a.m.fileTracingMode.WithLabelValues(o.FileTracingMode).Set(1)
	}
	o.Registry.MustRegister(&tableCollector{a: a}, scanCollector{src: o.Source})
	return a
}

func (a *Agent) monitor() bool { return a.cfg.Mode == ModeMonitor }

// nextWake is when the first timer is due.
func (a *Agent) nextWake() (time.Duration, bool) { return a.timers.next() }

// procAttrs are the log attributes of an action on p.
func (a *Agent) procAttrs(p *proc, extra ...any) []any {
	end := a.clock.Now()
	if p.exited {
		end = p.exitAt // the runtime of an ended process stops at its exit
	}
	attrs := []any{"rule", p.tree.rule.Name, "pid", p.PID, "comm", p.Comm, "cgroup", p.Cgroup,
		"runtime", (end - p.Start).Round(time.Millisecond).String()}
	if p.podUID != "" {
		attrs = append(attrs, "pod_uid", p.podUID)
	}
	if p.containerID != "" {
		attrs = append(attrs, "container_id", p.containerID)
	}
	return append(attrs, extra...)
}

func (a *Agent) rootAttrs(t *tree, extra ...any) []any {
	if p, ok := t.members[t.rootPID]; ok {
		return a.procAttrs(p, extra...)
	}
	attrs := []any{"rule", t.rule.Name, "pid", t.rootPID, "cgroup", t.name,
		"runtime", (a.clock.Now() - t.start).Round(time.Millisecond).String()}
	return append(attrs, extra...)
}
