package agent

import (
	"slices"
	"sort"
	"time"

	"overtime/internal/node"
)

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
	a.filesStart()
	return nil
}

// reconcile makes the table agree with a procfs scan that began at scanAt:
// members that are gone are retired, the others take the program the scan
// found them running (an exec whose record was lost changes nothing else:
// a member stays in its tree), trees left in cgroups are adopted with
// their real deadlines, and matching processes not yet tracked are added
// with their real start time. It runs at start and after lost events.
func (a *Agent) reconcile(scan []node.Process, adopted map[string][]int, scanAt time.Duration) {
	now := a.clock.Now()
	sort.SliceStable(scan, func(i, j int) bool { return scan[i].Born < scan[j].Born })
	alive := make(map[int]*node.Process, len(scan))
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
		case !ok || !node.SameBorn(s.Born, p.Born):
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
	// Matching processes, oldest first, each after its parent: start times
	// are clock ticks, so a child forked at once shares its parent's.
	seen := make(map[int]bool, len(scan))
	var take func(s *node.Process)
	take = func(s *node.Process) {
		if seen[s.PID] {
			return
		}
		seen[s.PID] = true
		if parent, ok := alive[s.PPID]; ok {
			take(parent)
		}
		if _, known := a.procs[s.PID]; known || s.PID == a.self || s.Zombie {
			return
		}
		if parent, ok := a.procs[s.PPID]; ok && !parent.exited {
			a.addMember(parent.tree, *s)
			return
		}
		if r := firstMatch(a.cfg.Rules, s); r != nil {
			a.newTree(r, *s, false)
		}
	}
	for i := range scan {
		take(&scan[i])
	}
}

// refresh gives member p the program a scan found it running: its exec
// record was lost, or it is newer than the record the table has. It stays
// in its tree, with the tree's rule and deadline.
func (a *Agent) refresh(p *proc, s *node.Process) {
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
func (a *Agent) adopt(name string, pids []int, alive map[int]*node.Process) {
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
		a.work(func() {
			if err := a.enf.Release(name); err != nil {
				a.log.Error("release tree cgroup", "cgroup", name, "err", err)
			}
		})
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
		a.work(func() {
			if err := a.enf.Release(name); err != nil {
				a.log.Error("remove empty tree cgroup", "cgroup", name, "err", err)
			}
		})
		return
	}
	t.counted = true
	a.running[rule.Name]++
	a.log.Info("adopted tree", "rule", rule.Name, "pid", rootPID, "cgroup", name,
		"members", t.live, "deadline_in", (t.deadline - a.clock.Now()).String())
}
