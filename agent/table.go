package agent

import (
	"strings"
	"time"

	"overtime/internal/node"
	"overtime/internal/treename"
)

// State is a tracked process's state, as the API shows it.
type State string

// The states of the contract.
const (
	StateRunning     State = "running"
	StateOverdue     State = "overdue"
	StateTerminating State = "terminating"
	StateKilled      State = "killed"
	StateUnkillable  State = "unkillable" // alive some seconds after SIGKILL
	StateExited      State = "exited"
	StateZombie      State = "zombie"
)

// zombieAfter is how long an exited process may wait for its parent's
// wait() before it counts as a zombie: every process is a zombie for a
// moment, and only the ones nobody reaps matter.
const zombieAfter = 2 * time.Second

// proc is one tracked process.
type proc struct {
	node.Process
	tree        *tree
	podUID      string
	containerID string

	exited   bool
	exitAt   time.Duration
	status   int // wait(2)-style
	zombie   bool
	orphaned bool

	// The last progress sample of this member (see stall.go).
	io, calls uint64
	cpu       time.Duration
	sampled   bool
	// unkillable: alive unkillableAfter past SIGKILL; blocked is what the
	// kernel shows it waits for, once read.
	unkillable bool
	blocked    *node.Blocked
}

// tree is a matched process and every process it forked, down the
// generations: they share a rule, a deadline and a cgroup.
type tree struct {
	name     string // the cgroup the enforcer gives it
	rule     *Rule
	rootPID  int
	start    time.Duration // the root's exec time: deadlines count from it
	deadline time.Duration
	killAt   time.Duration // deadline + grace

	overdue    bool       // the deadline passed
	signalled  bool       // the kill signal was sent (enforce mode)
	killed     bool       // SIGKILL was sent through the cgroup (enforce mode)
	ended      bool       // every member has exited
	capped     bool       // ended at exec: its rule's max_running was reached
	queued     queued     // its work on the confinement worker (see confine.go)
	order      *killOrder // its SIGKILL armed for the kill thread (see killer.go)
	counted    bool       // counts towards its rule's max_running
	rootStatus int
	confirmTry int
	killedAt   time.Duration // when SIGKILL was first sent

	// Progress, for a rule with stall (see stall.go).
	lastProgress time.Duration   // the last sample that saw progress, or tracking start
	cpuSince     time.Duration   // CPU the members used since lastProgress
	sampledAt    time.Duration   // the last sample: members born after it count from zero
	sampling     bool            // a sample is queued or in flight
	stalled      bool            // no progress for the rule's stall (once per episode)
	endStalled   bool            // being ended because it stalled, not at its deadline
	unmounted    map[string]bool // mount points on_unkillable unmounted (or tried)

	members map[int]*proc
	live    int

	created map[string]*created // by path, in the root's mount namespace
	opened  map[string]bool     // opened with O_CREAT, but not created by the tree
	seq     int
}

// created is a filesystem entry the tree made.
type created struct {
	path     string
	dev, ino uint64
	pid      int // the member that made it
	seq      int // creation order
}

// treeName names a tree's cgroup and parseTreeName reads one back
// (overtime.<rule>.<root pid>.<exec time ns>, see treename).
var (
	treeName      = treename.Format
	parseTreeName = treename.Parse
)

// state is what the API shows for p.
func (p *proc) state() State {
	t := p.tree
	switch {
	case p.exited && p.zombie:
		return StateZombie
	case p.exited && t.killed:
		return StateKilled
	case p.exited:
		return StateExited
	case p.unkillable:
		return StateUnkillable
	case t.killed:
		return StateKilled
	case t.signalled:
		return StateTerminating
	case t.overdue:
		return StateOverdue
	}
	return StateRunning
}

// depth counts the segments of a path, for removing deepest first.
func depth(p string) int { return strings.Count(p, "/") }
