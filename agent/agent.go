// Package agent decides. It holds the config and its rules, the table of
// tracked process trees and their deadlines, the event loop, the metrics and
// the HTTP API. It reads the node only through a Source and changes it only
// through an Enforcer, so the whole decision core runs in a unit test with
// fakes and an injected clock.
package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"overtime/collector"
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
	// FileTracingMode is how the kernel side records file changes
	// ("fentry" or "tracepoint"), exported as overtime_file_tracing_mode
	// (empty: not exported).
	FileTracingMode string
}

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

	// mu guards everything below: the loop writes, HTTP handlers and the
	// metrics collector read.
	mu      sync.RWMutex
	cfg     *Config
	procs   map[int]*proc
	trees   map[string]*tree
	running map[string]int // live trees by rule, for max_running
	timers  timers
	actions *actionLog

	// The file tracepoints (see Source.EnableFiles): on while a tree is
	// tracked or a rule cannot be prefiltered (filterAll: the kernel
	// cannot hold its candidates), off after filesIdle with nothing
	// tracked. filesArmed: a timerFiles is queued; filesPinned: detaching
	// failed, they stay on.
	filesOn, filesArmed, filesPinned, filterAll bool
	filesIdle                                   time.Duration

	// Progress sampling (see stall.go): trees due for the next pass, a
	// pass in flight, a timerPass queued, when the last pass started.
	due                           []*tree
	passBusy, passArmed, passEver bool
	lastPass                      time.Duration

	// Work done off the loop comes back on these (see stall.go).
	passes    chan samplePass
	diagnoses chan diagnosis
	unmounts  chan unmounted
	workers   sync.WaitGroup
	done      chan struct{} // closed when Run returns

	// Tree cgroups are removed off the loop (see release).
	releaseOnce sync.Once
	releases    chan *tree
	releasing   sync.WaitGroup

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
		src:       o.Source,
		enf:       o.Enforcer,
		prog:      o.Progress,
		unm:       o.Unmounter,
		clock:     o.Clock,
		log:       o.Logger,
		self:      o.Self,
		cfg:       o.Config,
		procs:     map[int]*proc{},
		trees:     map[string]*tree{},
		running:   map[string]int{},
		actions:   newActionLog(512),
		filesOn:   o.Source.FilesEnabled(),
		filesIdle: o.FilesIdle,
		pings:     make(chan chan struct{}),
		reloads:   make(chan *Config, 1),
		passes:    make(chan samplePass, 1),
		diagnoses: make(chan diagnosis, 256),
		unmounts:  make(chan unmounted, 64),
		done:      make(chan struct{}),
	}
	a.m = NewMetrics(o.Registry, o.Build)
	if o.FileTracingMode != "" {
		a.m.fileTracingMode.WithLabelValues(o.FileTracingMode).Set(1)
	}
	o.Registry.MustRegister(&tableCollector{a: a}, scanCollector{src: o.Source})
	return a
}

func (a *Agent) monitor() bool { return a.cfg.Mode == ModeMonitor }

// start brings the table up to date with the node: the trees an earlier run
// left in their cgroups, then every matching process already running.
func (a *Agent) start() error {
	if err := a.setFilter(a.cfg); err != nil {
		return err
	}
	adopted, err := a.enf.Adopt()
	if err != nil {
		return err
	}
	scanAt := a.clock.Now()
	procs, err := a.src.Scan()
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reconcile(procs, adopted, scanAt)
	if a.filesOn {
		a.m.fileTracing.Set(1)
	}
	a.filesUnused(a.clock.Now())
	return nil
}

// setFilter tells the kernel which execs the rules of cfg may match, and
// which it holds at exec.
func (a *Agent) setFilter(cfg *Config) error {
	f := cfg.Filter()
	if err := a.src.SetFilter(f.Comms, f.All, f.Hold); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.filterAll = f.All
	if f.All {
		// Candidates of such a rule are not held: file tracing stays on.
		a.enableFiles()
	} else {
		a.filesUnused(a.clock.Now())
	}
	return nil
}

// enableFiles attaches the file tracepoints, before a tracked process runs
// on. If that fails, the tree is tracked and ended all the same; only what
// it creates is not recorded.
func (a *Agent) enableFiles() {
	if a.filesOn {
		return
	}
	if err := a.src.EnableFiles(); err != nil {
		a.log.Error("attach file tracepoints: created files are not recorded", "err", err)
		return
	}
	a.filesOn = true
	a.m.fileTracing.Set(1)
	a.log.Debug("file tracepoints attached")
}

// filesUnused queues the detaching of the file tracepoints when nothing is
// tracked.
func (a *Agent) filesUnused(now time.Duration) {
	if a.filesOn && !a.filesArmed && !a.filesPinned && !a.filterAll && len(a.trees) == 0 {
		a.filesArmed = true
		a.timers.add(timer{at: now + a.filesIdle, kind: timerFiles})
	}
}

// filesTimer detaches the file tracepoints if nothing was tracked since.
func (a *Agent) filesTimer(now time.Duration) {
	a.filesArmed = false
	if !a.filesOn || a.filesPinned || a.filterAll || len(a.trees) > 0 {
		return
	}
	off, err := a.src.DisableFiles()
	switch {
	case err != nil:
		a.filesPinned = true
		a.log.Warn("file tracepoints stay attached: they cannot be detached safely here", "err", err)
	case !off:
		// The kernel tracks a process the table does not have yet (an
		// exec on its way): later.
		a.filesUnused(now)
	default:
		a.filesOn = false
		a.m.fileTracing.Set(0)
		a.log.Debug("file tracepoints detached: nothing tracked")
	}
}

// dropTree removes t from the table.
func (a *Agent) dropTree(t *tree) {
	if a.trees[t.name] == t {
		delete(a.trees, t.name)
	}
	a.filesUnused(a.clock.Now())
}

// reconcile makes the table agree with a procfs scan that began at scanAt:
// members that are gone are retired, the others take the program the scan
// found them running (an exec whose record was lost changes nothing else:
// a member stays in its tree), trees left in cgroups are adopted with
// their real deadlines, and matching processes not yet tracked are added
// with their real start time. It runs at start and after lost events.
func (a *Agent) reconcile(scan []collector.Process, adopted map[string][]int, scanAt time.Duration) {
	now := a.clock.Now()
	alive := make(map[int]*collector.Process, len(scan))
	a.scanAt = scanAt
	a.scanned = make(map[int]time.Duration, len(scan))
	for i := range scan {
		alive[scan[i].PID] = &scan[i]
		if !scan[i].Zombie {
			a.scanned[scan[i].PID] = scan[i].Born
		}
	}
	// Retire members that are gone or whose PID now names another process,
	// mark exited the ones the scan found zombies (their exit was lost),
	// and refresh what the others run.
	for pid, p := range a.procs {
		s, ok := alive[pid]
		switch {
		case !ok || !collector.SameBorn(s.Born, p.Born):
			if !p.exited {
				a.memberExited(p, now, p.status)
			}
			a.reaped(p)
		case s.Zombie:
			if !p.exited {
				a.memberExited(p, now, p.status)
			}
		case !p.exited:
			a.refresh(p, s)
		}
	}
	// Trees an earlier run of the agent left in their cgroups.
	names := make([]string, 0, len(adopted))
	for n := range adopted {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, known := a.trees[name]; known {
			continue
		}
		a.adopt(name, adopted[name], alive)
	}
	// Matching processes, parents before children.
	sort.Slice(scan, func(i, j int) bool { return scan[i].Born < scan[j].Born })
	for i := range scan {
		s := &scan[i]
		if _, known := a.procs[s.PID]; known || s.PID == a.self || s.Zombie {
			continue
		}
		if parent, ok := a.procs[s.PPID]; ok && !parent.exited {
			a.addMember(parent.tree, *s)
			continue
		}
		if r := firstMatch(a.cfg.Rules, s); r != nil {
			a.newTree(r, *s, false)
		}
	}
}

// refresh gives member p the program a scan found it running: its exec
// record was lost, or it is newer than the record the table has. It stays
// in its tree, with the tree's rule and deadline.
func (a *Agent) refresh(p *proc, s *collector.Process) {
	exe := s.Exe
	same := s.Comm == p.Comm && slices.Equal(s.Args, p.Args)
	if exe == "" && same {
		// Unreadable now (ptrace rules), and the same program: keep the
		// path the exec record gave.
		exe = p.Exe
	}
	if same && exe == p.Exe {
		return
	}
	a.log.Debug("member runs another program (found by a scan)",
		a.procAttrs(p, "new_comm", s.Comm, "exe", exe, "args", s.Args)...)
	p.Comm, p.Args, p.Exe = s.Comm, s.Args, exe
}

// stale reports whether a kernel record stamped at is older than the last
// procfs scan: the scan saw the process after the record did, so the table
// already has what the scan found. Lost records are noticed from a counter,
// out of band, so records from before a resync's scan may still be read
// after it.
func (a *Agent) stale(at time.Duration) bool { return at < a.scanAt }

// staleWindow bounds how much older than a record read after it another
// record may be (the kernel stamps a record a moment before it takes its
// place in the ring buffer): once a record stamped this long after the last
// scan is read, none older than the scan can follow.
const staleWindow = time.Second

// adopt rebuilds a tree from a cgroup an earlier run created.
func (a *Agent) adopt(name string, pids []int, alive map[int]*collector.Process) {
	ruleName, rootPID, start, ok := parseTreeName(name)
	if !ok {
		// Not a name this agent makes: someone else's; leave it alone.
		a.log.Debug("ignoring a cgroup that is not an overtime tree", "cgroup", name)
		return
	}
	var rule *Rule
	for _, r := range a.cfg.Rules {
		if r.Name == ruleName {
			rule = r
		}
	}
	if rule == nil {
		// Its rule is gone from the config: give the processes back.
		a.log.Warn("releasing tree cgroup of an unknown rule", "cgroup", name, "rule", ruleName)
		if err := a.enf.Release(name); err != nil {
			a.log.Error("release tree cgroup", "cgroup", name, "err", err)
		}
		return
	}
	t := a.makeTree(name, rule, rootPID, start)
	for _, pid := range pids {
		if s, ok := alive[pid]; ok && !s.Zombie {
			a.join(t, *s)
		}
	}
	if t.live == 0 {
		a.dropTree(t)
		if err := a.enf.Release(name); err != nil {
			a.log.Error("remove empty tree cgroup", "cgroup", name, "err", err)
		}
		return
	}
	t.counted = true
	a.running[rule.Name]++
	a.log.Info("adopted tree", "rule", rule.Name, "pid", rootPID, "cgroup", name,
		"members", t.live, "deadline_in", (t.deadline - a.clock.Now()).String())
}

func (a *Agent) makeTree(name string, r *Rule, rootPID int, start time.Duration) *tree {
	a.enableFiles()
	t := &tree{
		name:     name,
		rule:     r,
		rootPID:  rootPID,
		start:    start,
		deadline: start + r.Timeout,
		killAt:   start + r.Timeout + r.Kill.Grace,
		members:  map[int]*proc{},
		created:  map[string]*created{},
		opened:   map[string]bool{},
	}
	a.trees[name] = t
	a.timers.add(timer{at: t.deadline, kind: timerDeadline, tree: t})
	a.watchProgress(t, a.clock.Now())
	return t
}

// newTree starts tracking a process that matched rule r at exec (atExec)
// or in a scan. Past its rule's max_running, a process that has just
// executed is ended at once; one found running is only counted.
func (a *Agent) newTree(r *Rule, p collector.Process, atExec bool) {
	if !a.roomFor(p.PID) {
		return
	}
	t := a.makeTree(treeName(r.Name, p.PID, p.Start), r, p.PID, p.Start)
	m := a.join(t, p)
	if atExec && r.MaxRunning > 0 && a.running[r.Name] >= r.MaxRunning {
		a.capTree(t, m)
		return
	}
	t.counted = true
	a.running[r.Name]++
	a.log.Info("tracking", a.procAttrs(m, "deadline_in", (t.deadline-a.clock.Now()).String())...)
	// The caller that started it: when it goes away first, the engine is
	// an orphan, the leak this agent exists for.
	if err := a.src.WatchParent(p.PID, p.PPID); err != nil {
		a.log.Debug("watch parent", "pid", p.PID, "ppid", p.PPID, "err", err)
	}
}

// capTree ends a tree at exec because its rule already has max_running
// trees alive on the node.
func (a *Agent) capTree(t *tree, m *proc) {
	r := t.rule
	t.capped = true
	a.m.capped.WithLabelValues(r.Name).Inc()
	why := fmt.Sprintf("max_running %d reached", r.MaxRunning)
	if a.monitor() {
		a.record(t, t.rootPID, "cap", "skipped_monitor", why+": would end it at exec")
		a.log.Warn("capped: would end it at exec (monitor mode)", a.procAttrs(m, "max_running", r.MaxRunning)...)
		return
	}
	err := a.enf.Kill(t.name)
	t.killed = true
	if err != nil {
		a.record(t, t.rootPID, "cap", "error", why+": "+err.Error())
		a.log.Error("capped: kill at exec failed", a.procAttrs(m, "max_running", r.MaxRunning, "err", err)...)
		return
	}
	a.record(t, t.rootPID, "cap", "ok", why+": ended at exec")
	a.log.Warn("capped: ended at exec", a.procAttrs(m, "max_running", r.MaxRunning)...)
}

// addMember adds a process forked by a member of t.
func (a *Agent) addMember(t *tree, p collector.Process) {
	if !a.roomFor(p.PID) {
		return
	}
	a.join(t, p)
	// A child born while its tree is being ended is ended with it.
	if t.killed && !a.monitor() {
		if err := a.enf.Kill(t.name); err != nil {
			a.log.Error("kill late member", "rule", t.rule.Name, "pid", p.PID, "err", err)
		}
	}
}

func (a *Agent) roomFor(pid int) bool {
	if len(a.procs) < a.cfg.Limits.MaxTracked {
		return true
	}
	a.m.limitHits.WithLabelValues("max_tracked_processes").Inc()
	a.log.Warn("not tracking: max_tracked_processes reached", "pid", pid, "limit", a.cfg.Limits.MaxTracked)
	if err := a.src.Untrack(pid); err != nil {
		a.log.Debug("untrack", "pid", pid, "err", err)
	}
	return false
}

// join puts p in t: in the table, in the kernel's tracked set and in t's
// cgroup.
func (a *Agent) join(t *tree, p collector.Process) *proc {
	m := &proc{Process: p, tree: t}
	m.podUID, m.containerID = collector.ParsePod(p.Cgroup)
	t.members[p.PID] = m
	t.live++
	a.procs[p.PID] = m
	if err := a.src.Track(p.PID); err != nil {
		a.log.Warn("track in kernel", "pid", p.PID, "err", err)
	}
	if err := a.enf.Confine(t.name, p.PID, p.Born, len(t.rule.Cleanup.Paths) > 0); err != nil {
		if isGone(err) {
			// It exited before it could be confined. Its exit and reap
			// events are normally on their way; if none comes (it ended
			// before the kernel tracked it), forget it a little later.
			a.timers.add(timer{at: a.clock.Now() + goneGrace, kind: timerGone, tree: t, pid: p.PID})
			return m
		}
		a.m.unconfined.WithLabelValues(t.rule.Name).Inc()
		a.log.Warn("could not move process into its tree cgroup; it will be signalled through its pidfd",
			a.procAttrs(m, "err", err)...)
	}
	return m
}

// release removes a dead tree's cgroup, off the event loop: an rmdir
// waits for the kernel's cgroup lock, milliseconds while many processes
// exit at once, and the next deadline must not wait behind it. The kernel
// reports an exit a moment before it takes the task out of its cgroup, so
// the cgroup may still be busy: then it is tried again, 1 ms later,
// doubling, about 4 s in all.
func (a *Agent) release(t *tree) {
	a.releaseOnce.Do(func() {
		a.releases = make(chan *tree, 4096)
		go func() {
			for t := range a.releases {
				a.releaseTry(t, 0)
			}
		}()
	})
	a.releasing.Add(1)
	a.releases <- t
}

// releaseTry makes one attempt and, when the cgroup is busy, schedules the
// next; it marks the release done when it ends either way.
func (a *Agent) releaseTry(t *tree, try int) {
	err := a.enf.Release(t.name)
	switch {
	case err == nil:
	case isBusy(err) && try < releaseTries:
		time.AfterFunc(releaseDelay<<try, func() { a.releaseTry(t, try+1) })
		return
	default:
		a.log.Error("remove tree cgroup", "rule", t.rule.Name, "cgroup", t.name, "err", err)
	}
	a.releasing.Done()
}

// Retries of a busy tree cgroup: 1 ms, doubling, about 4 s in all.
const (
	releaseDelay = time.Millisecond
	releaseTries = 12
)

// isBusy reports whether the enforcer said a tree cgroup still holds tasks
// finishing their exit.
func isBusy(err error) bool {
	var b interface{ Busy() bool }
	return errors.As(err, &b) && b.Busy()
}

// isGone reports whether the enforcer said the process no longer exists.
func isGone(err error) bool {
	var g interface{ Gone() bool }
	return errors.As(err, &g) && g.Gone()
}

// handle applies one event to the table.
func (a *Agent) handle(ev collector.Event) {
	if a.scanned != nil && ev.Time > a.scanAt+staleWindow {
		a.scanned = nil
	}
	switch ev.Type {
	case collector.EventExec, collector.EventFork, collector.EventExit, collector.EventFile:
		a.m.events.WithLabelValues(ev.Type.String()).Inc()
	}
	switch ev.Type {
	case collector.EventExec:
		a.onExec(ev)
	case collector.EventFork:
		a.onFork(ev)
	case collector.EventExit:
		if p, ok := a.member(ev); ok && !p.exited {
			a.memberExited(p, ev.Time, ev.ExitCode)
		}
	case collector.EventReap:
		if p, ok := a.member(ev); ok {
			if !p.exited {
				a.memberExited(p, ev.Time, ev.ExitCode)
			}
			a.reaped(p)
		}
	case collector.EventFile:
		a.onFile(ev)
	case collector.EventLost:
		a.m.lost.Add(float64(ev.Lost))
		a.resync()
	case collector.EventOrphan:
		if p, ok := a.procs[ev.PID]; ok && !p.exited && !p.orphaned {
			a.markOrphan(p)
		}
	}
}

// member finds the tracked process an exit or reap record is about; a
// record of an earlier process with the same PID (read after a resync
// found its successor) is not.
func (a *Agent) member(ev collector.Event) (*proc, bool) {
	p, ok := a.procs[ev.PID]
	if !ok || (ev.Born != 0 && !collector.SameBorn(ev.Born, p.Born)) {
		return nil, false
	}
	return p, true
}

func (a *Agent) onExec(ev collector.Event) {
	if ev.Proc == nil {
		return
	}
	p := *ev.Proc
	// The kernel stopped the new process at exec (a comm of a rule with
	// max_running, or file tracing was off): whatever is decided below, it
	// runs on unless it is ended at its cap. (The kernel never holds a
	// process it tracks, so a member's own exec is not held.)
	if p.Held {
		defer a.resumeHeld(p.PID, p.Born)
	}
	stale := a.stale(ev.Time)
	if m, ok := a.procs[p.PID]; ok && collector.SameBorn(m.Born, p.Born) {
		// A member executed another program: it stays in its tree, with the
		// tree's rule and deadline. A record older than the last scan
		// changes nothing: the scan read what it runs later.
		if !m.exited && !stale {
			m.Comm, m.Args, m.Exe = p.Comm, p.Args, p.Exe
		}
		return
	}
	if born, seen := a.scanned[p.PID]; stale && seen && collector.SameBorn(born, p.Born) {
		// The last scan saw this process after this exec and matched what
		// it ran then: no rule, or it would be in the table.
		if err := a.src.Untrack(p.PID); err != nil {
			a.log.Debug("untrack", "pid", p.PID, "err", err)
		}
		return
	}
	if m, ok := a.procs[p.PID]; ok {
		// The PID was reaped and reused before we saw the reap.
		if !m.exited {
			a.memberExited(m, ev.Time, m.status)
		}
		a.reaped(m)
	}
	if parent, ok := a.procs[p.PPID]; ok && !parent.exited {
		// A child whose fork we did not see (it was forked before its
		// parent was tracked): it belongs to its parent's tree.
		a.addMember(parent.tree, p)
		return
	}
	if p.PID == a.self {
		return
	}
	r := firstMatch(a.cfg.Rules, &p)
	if r == nil {
		if err := a.src.Untrack(p.PID); err != nil {
			a.log.Debug("untrack", "pid", p.PID, "err", err)
		}
		return
	}
	a.newTree(r, p, true)
}

func (a *Agent) onFork(ev collector.Event) {
	parent, ok := a.procs[ev.PPID]
	if !ok || parent.exited {
		if err := a.src.Untrack(ev.PID); err != nil {
			a.log.Debug("untrack", "pid", ev.PID, "err", err)
		}
		return
	}
	if old, ok := a.procs[ev.PID]; ok {
		if collector.SameBorn(old.Born, ev.Born) {
			// Known already: a record read after the scan that found it.
			return
		}
		// The PID was reaped and reused before we saw the reap.
		if !old.exited {
			a.memberExited(old, ev.Time, old.status)
		}
		a.reaped(old)
	}
	p := parent.Process
	p.PID, p.PPID, p.Born, p.Start = ev.PID, ev.PPID, ev.Born, ev.Time
	a.addMember(parent.tree, p)
}

// memberExited records that every thread of p has exited.
func (a *Agent) memberExited(p *proc, at time.Duration, status int) {
	p.exited, p.exitAt, p.status = true, at, status
	t := p.tree
	a.enf.Forget(t.name, p.PID)
	t.live--
	if p.PID == t.rootPID {
		t.rootStatus = status
	}
	// Children of p that still run are orphans now.
	for _, c := range t.members {
		if c.PPID == p.PID && !c.exited && !c.orphaned {
			a.markOrphan(c)
		}
	}
	a.timers.add(timer{at: at + zombieAfter, kind: timerZombie, tree: t, pid: p.PID})
	if t.live == 0 {
		a.endTree(t, at)
	}
}

func (a *Agent) markOrphan(c *proc) {
	c.orphaned = true
	a.log.Warn("orphaned: the process that started it exited", a.procAttrs(c)...)
}

// reaped drops a process whose parent waited for it (or that is gone).
func (a *Agent) reaped(p *proc) {
	t := p.tree
	if cur, ok := a.procs[p.PID]; ok && cur == p {
		delete(a.procs, p.PID)
	}
	delete(t.members, p.PID)
	if len(t.members) == 0 && t.ended {
		a.dropTree(t)
	}
}

// endTree runs when the last member of t has exited.
func (a *Agent) endTree(t *tree, at time.Duration) {
	t.ended = true
	if t.counted {
		a.running[t.rule.Name]--
	}
	outcome := "exited"
	switch {
	case t.signalled || t.killed:
		outcome = "killed"
	case t.rootStatus != 0:
		outcome = "failed"
	}
	runtime := at - t.start
	a.m.runtime.WithLabelValues(t.rule.Name, outcome).Observe(runtime.Seconds())
	if t.killed && at >= t.killAt {
		lat := at - t.killAt
		a.m.killLatency.WithLabelValues(t.rule.Name).Observe(lat.Seconds())
		a.record(t, t.rootPID, "kill", "confirmed", "tree gone "+lat.String()+" after deadline + grace")
	}
	a.log.Info("tree ended", a.rootAttrs(t, "outcome", outcome, "tree_cgroup", t.name)...)
	if cleanupApplies(t.rule.Cleanup.When, outcome) {
		a.cleanup(t)
	}
	a.release(t)
	if len(t.members) == 0 {
		a.dropTree(t)
	}
}

func cleanupApplies(when []string, outcome string) bool {
	for _, w := range when {
		switch {
		case w == "always",
			w == "killed" && outcome == "killed",
			w == "failed" && (outcome == "failed" || outcome == "killed"):
			return true
		}
	}
	return false
}

// tick runs every timer due at now.
func (a *Agent) tick(now time.Duration) {
	for {
		tm, ok := a.timers.popDue(now)
		if !ok {
			return
		}
		t := tm.tree
		switch tm.kind {
		case timerDeadline:
			if !t.ended && a.trees[t.name] == t {
				a.deadline(t, now)
			}
		case timerKill:
			// (In monitor mode a stalled tree may have resumed since.)
			if !t.ended && a.trees[t.name] == t && (!t.endStalled || t.stalled || t.overdue) {
				a.kill(t, now)
			}
		case timerConfirm:
			if !t.ended && a.trees[t.name] == t {
				a.confirm(t, now)
			}
		case timerFiles:
			a.filesTimer(now)
		case timerSample:
			a.sampleDue(t, now)
		case timerPass:
			a.passArmed = false
			a.startPass(now)
		case timerGone:
			if p, ok := a.procs[tm.pid]; ok && p.tree == t && !p.exited {
				a.memberExited(p, now, 0)
				a.reaped(p)
			}
		case timerZombie:
			if p, ok := a.procs[tm.pid]; ok && p.tree == t && p.exited && !p.zombie {
				if a.src.Reaped(p.PID, p.Born) {
					// Reaped, and its reap record never came.
					a.log.Debug("reaped without a reap record", a.procAttrs(p)...)
					if err := a.src.Untrack(p.PID); err != nil {
						a.log.Debug("untrack", "pid", p.PID, "err", err)
					}
					a.reaped(p)
					continue
				}
				p.zombie = true
				a.log.Warn("zombie: exited and not reaped by its parent", a.procAttrs(p, "parent", p.PPID)...)
			}
		}
	}
}

// deadline: the tree is overdue; send the rule's signal to all of it,
// unless it is already being ended (it stalled).
func (a *Agent) deadline(t *tree, now time.Duration) {
	t.overdue = true
	a.m.timeouts.WithLabelValues(t.rule.Name).Inc()
	if t.signalled || t.killed {
		return
	}
	t.endStalled = false
	t.killAt = t.deadline + t.rule.Kill.Grace
	a.end(t, now, "deadline reached")
}

// end ends t, overdue or stalled: the rule's signal now, SIGKILL after the
// grace.
func (a *Agent) end(t *tree, now time.Duration, why string) {
	r := t.rule
	if t.endStalled {
		t.killAt = now + r.Kill.Grace
	}
	if r.Kill.Signal == unix.SIGKILL {
		a.kill(t, now)
		return
	}
	a.timers.add(timer{at: t.killAt, kind: timerKill, tree: t})
	a.signal(t, r.Kill.Signal, r.Kill.SignalName, why)
}

// endLabel starts the log messages about ending t.
func endLabel(t *tree) string {
	if t.endStalled {
		return stallReason
	}
	return "overdue"
}

func (a *Agent) signal(t *tree, sig syscall.Signal, name, why string) {
	r := t.rule
	if a.monitor() {
		a.m.kills.WithLabelValues(r.Name, name, "skipped_monitor").Inc()
		a.record(t, t.rootPID, "signal", "skipped_monitor", why+": would send "+name)
		a.log.Warn(endLabel(t)+": would send "+name+" (monitor mode)", a.rootAttrs(t)...)
		return
	}
	n, err := a.enf.Signal(t.name, sig)
	t.signalled = true
	if err != nil {
		a.m.kills.WithLabelValues(r.Name, name, "error").Inc()
		a.record(t, t.rootPID, "signal", "error", err.Error())
		a.log.Error(endLabel(t)+": "+name+" failed", a.rootAttrs(t, "err", err)...)
		return
	}
	a.m.kills.WithLabelValues(r.Name, name, "ok").Inc()
	a.record(t, t.rootPID, "signal", "ok", why+": sent "+name)
	a.log.Warn(endLabel(t)+": sent "+name+" to the tree", a.rootAttrs(t, "processes", n)...)
}

// kill: deadline + grace, the tree is still alive: SIGKILL through its cgroup.
func (a *Agent) kill(t *tree, now time.Duration) {
	r := t.rule
	prefix := ""
	if t.endStalled {
		prefix = stallReason + ": "
	}
	if a.monitor() {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "skipped_monitor").Inc()
		a.record(t, t.rootPID, "kill", "skipped_monitor", prefix+"grace over: would kill the tree")
		a.log.Warn(endLabel(t)+" past grace: would kill the tree (monitor mode)", a.rootAttrs(t)...)
		return
	}
	err := a.enf.Kill(t.name)
	if !t.killed {
		t.killedAt = now
	}
	t.killed = true
	if err != nil {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "error").Inc()
		a.record(t, t.rootPID, "kill", "error", err.Error())
		a.log.Error("kill failed", a.rootAttrs(t, "err", err)...)
	} else {
		a.m.kills.WithLabelValues(r.Name, "SIGKILL", "ok").Inc()
		a.record(t, t.rootPID, "kill", "ok", prefix+"grace over: SIGKILL to the tree")
		a.log.Warn("killed the tree", a.rootAttrs(t)...)
	}
	a.timers.add(timer{at: now + confirmDelay(0), kind: timerConfirm, tree: t})
}

// confirmDelay is how long to wait before checking that a killed tree is
// gone, then again, backing off.
func confirmDelay(try int) time.Duration {
	d := time.Second << try
	if d > 30*time.Second {
		d = 30 * time.Second
	}
	return d
}

// confirm: a killed tree has members still alive: kill again and say so.
func (a *Agent) confirm(t *tree, now time.Duration) {
	t.confirmTry++
	a.record(t, t.rootPID, "kill", "error", "tree still alive after SIGKILL")
	a.log.Error("tree still alive after SIGKILL; killing again", a.rootAttrs(t, "alive", t.live)...)
	if err := a.enf.Kill(t.name); err != nil {
		a.m.kills.WithLabelValues(t.rule.Name, "SIGKILL", "error").Inc()
	}
	if now-t.killedAt >= unkillableAfter {
		a.unkillable(t, now)
	}
	a.timers.add(timer{at: now + confirmDelay(t.confirmTry), kind: timerConfirm, tree: t})
}

// resync rescans procfs after the kernel dropped events.
func (a *Agent) resync() {
	a.m.resyncs.Inc()
	scanAt := a.clock.Now()
	procs, err := a.src.Scan()
	if err != nil {
		a.log.Error("resync scan", "err", err)
		return
	}
	adopted, err := a.enf.Adopt()
	if err != nil {
		a.log.Error("resync adopt", "err", err)
		adopted = nil
	}
	pending, err := a.src.Pending()
	if err != nil {
		a.log.Error("resync: list undecided candidates", "err", err)
	}
	a.reconcile(procs, adopted, scanAt)
	a.settlePending(pending, procs)
	a.log.Warn("resynced after lost events", "tracked", len(a.procs))
}

// settlePending decides the exec candidates whose records were lost. Any
// may have been stopped by the kernel at exec (a held comm, or file tracing
// was off), so each one alive is resumed (SIGCONT) unless it is ended at
// its cap; those no tree has are dropped from the kernel's tracked set.
func (a *Agent) settlePending(pending []int, scan []collector.Process) {
	comm := make(map[int]*collector.Process, len(scan))
	for i := range scan {
		comm[scan[i].PID] = &scan[i]
	}
	for _, pid := range pending {
		if s, alive := comm[pid]; alive && !s.Zombie {
			a.resumeHeld(pid, s.Born)
		}
		if _, tracked := a.procs[pid]; !tracked {
			if err := a.src.Untrack(pid); err != nil {
				a.log.Debug("untrack", "pid", pid, "err", err)
			}
		}
	}
}

// resumeHeld continues a process the kernel stopped at exec, unless it is
// being ended at its rule's cap.
func (a *Agent) resumeHeld(pid int, born time.Duration) {
	if m, ok := a.procs[pid]; !ok || !m.tree.capped || a.monitor() {
		if err := a.enf.Resume(pid, born); err != nil {
			a.log.Debug("resume held process", "pid", pid, "err", err)
		}
	}
	// Decided either way: off the record, so the guard leaves it alone.
	if err := a.src.HoldDone(pid); err != nil {
		a.log.Debug("hold record", "pid", pid, "err", err)
	}
}

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
