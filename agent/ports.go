package agent

import (
	"context"
	"syscall"
	"time"

	"overtime/internal/node"
)

// Source is the node as read, in three parts: the event stream, the procfs
// reader and the kernel's filter and holds. collector.Source satisfies all
// three; tests use a fake.
type Source interface {
	EventStream
	ProcReader
	Kernel
}

// EventStream is what happens on the node, as it happens.
type EventStream interface {
	// Run delivers events to the channel until ctx is done, then closes it.
	Run(ctx context.Context, events chan<- node.Event) error
	// WatchParent reports EventOrphan for child when parent exits first.
	WatchParent(child, parent int) error
}

// ProcReader reads processes from procfs: what runs now, what is gone,
// what a process holds open.
type ProcReader interface {
	// Scan lists the processes running now (start-up and resync).
	Scan() ([]node.Process, error)
	// ScanSkipped counts the processes scans left out because they could
	// not be read (other than by exiting).
	ScanSkipped() uint64
	// Reaped reports whether process pid, started at born, is gone, not
	// even a zombie (false when unsure).
	Reaped(pid int, born time.Duration) bool
	// OpenFiles lists pid's open files (paths as the process sees them).
	OpenFiles(pid int) ([]string, error)
}

// Kernel steers what the kernel reports and holds: the exec comms it
// lets through or stops, the processes it tracks, the file syscall
// tracepoints, its record of held processes.
type Kernel interface {
	// SetFilter tells the kernel which exec comms may match a rule; all
	// lets every exec through (a rule with no comm or literal exe basename);
	// the comms in hold are stopped at exec until the agent resumes
	// (Enforcer.Resume) or ends them.
	SetFilter(comms []string, all bool, hold []string) error
	// Track marks pid as tracked: its forks, exits and file changes are
	// reported from now on. Untrack forgets it.
	Track(pid int) error
	Untrack(pid int) error
	// Pending lists exec candidates the kernel tracks that the agent has
	// neither tracked nor untracked (their exec records were lost).
	Pending() ([]int, error)
	// EnableFiles starts reporting file changes of tracked processes (the
	// file syscall tracepoints). While they are off, the kernel holds every
	// new candidate at exec (Process.Held) so none of its file changes is
	// missed: the agent enables them before it resumes a process it tracks.
	EnableFiles() error
	// DisableFiles stops it, unless the kernel tracks a process: then it
	// returns false and they stay on.
	DisableFiles() (bool, error)
	// FilesEnabled reports whether file changes are reported.
	FilesEnabled() bool
	// HoldDone takes pid, stopped by the kernel at exec, off the kernel's
	// hold record once it is resumed or ended (else the guard resumes it at
	// the hold bound).
	HoldDone(pid int) error
	// HoldsExpired counts the held processes the guard resumed at the bound.
	HoldsExpired() uint64
}

// Enforcer changes the node. enforcer.Enforcer satisfies it; tests use a fake.
// A tree is named by the agent (see treeName); the enforcer gives it a child
// cgroup of that name beside the root process's own cgroup.
type Enforcer interface {
	// Confine moves pid (born at born, on the boot-time clock) into the
	// tree's cgroup, creating it on first use, and keeps a pidfd for it. A
	// pid whose start time no longer matches born is refused. With view
	// (the rule has cleanup paths), the tree's first Confine also keeps the
	// process's root directory and mount namespace for Remove.
	Confine(tree string, pid int, born time.Duration, view bool) error
	// Resume continues a process the kernel stopped at exec (SIGCONT
	// through a pidfd, after checking its start time).
	Resume(pid int, born time.Duration) error
	// Forget drops a member that has exited.
	Forget(tree string, pid int)
	// Signal sends sig to every live member of the tree; it returns how
	// many processes were signalled.
	Signal(tree string, sig syscall.Signal) (int, error)
	// Kill sends SIGKILL to the whole tree through pidfds and through its
	// cgroup (cgroup.kill, or freeze-kill-thaw before 5.14 and on v1), the
	// cgroup part in the background: it never waits on the kernel.
	Kill(tree string) error
	// Release removes the tree's cgroup. Members still alive (agent stop)
	// are first moved back to the cgroup they came from.
	Release(tree string) error
	// Adopt lists the tree cgroups an earlier run left behind, with the
	// PIDs inside each.
	Adopt() (map[string][]int, error)
	// Remove deletes one entry the tree created: path (absolute, in the
	// mount namespace of the tree's root) if it is still inode dev/ino, no
	// live process holds it open, and, for a directory, it is empty. It
	// returns the bytes freed, or the reason it was skipped ("replaced",
	// "held_open", "not_empty", "gone"). With dryRun it only checks.
	Remove(tree, path string, dev, ino uint64, dryRun bool) (freed int64, skip string, err error)
}

// Progress reads what the members of a tree have done, for stall detection,
// and what a process that outlived SIGKILL is blocked on. collector.Procfs
// satisfies it; tests use a fake. The agent calls it off the event loop
// only (it reads procfs).
type Progress interface {
	// Sample returns the cumulative I/O and CPU of each member still alive
	// with its start time; the others are left out.
	Sample(members []node.Member) []node.Usage
	// Diagnose says what process pid (started at born) is blocked on; an
	// error means it is gone.
	Diagnose(pid int, born time.Duration) (node.Blocked, error)
}

// Unmounter releases a process that sleeps uninterruptibly on a mount:
// enforcer.Enforcer satisfies it.
type Unmounter interface {
	// ForceUnmount detaches mountPoint (a path in the mount namespace of
	// process pid, started at born) with MNT_FORCE | MNT_DETACH: a dead
	// NFS or FUSE server's pending requests fail and the process can die.
	ForceUnmount(pid int, born time.Duration, mountPoint string) error
}
