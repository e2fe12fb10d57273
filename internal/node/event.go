package node

import "time"

// EventType says what happened to a process.
type EventType uint8

const (
	// EventExec: a process executed a new program (Proc is set).
	EventExec EventType = iota + 1
	// EventFork: a tracked (or candidate) process forked a new process.
	EventFork
	// EventExit: every thread of the process has exited; it may stay a zombie.
	EventExit
	// EventReap: the process was reaped by its parent (the end of a zombie).
	EventReap
	// EventFile: a tracked process created, renamed or removed a file.
	EventFile
	// EventLost: the kernel dropped Lost events; the table needs a resync.
	EventLost
	// EventOrphan: the parent of watched process PID exited while PID runs
	// on (the caller that started it gave up and went away).
	EventOrphan
)

func (t EventType) String() string {
	switch t {
	case EventExec:
		return "exec"
	case EventFork:
		return "fork"
	case EventExit:
		return "exit"
	case EventReap:
		return "reap"
	case EventFile:
		return "file"
	case EventLost:
		return "lost"
	case EventOrphan:
		return "orphan"
	}
	return "unknown"
}

// Process is what is known of a process at exec or from a procfs scan.
type Process struct {
	PID  int
	PPID int
	// Comm is the task comm, as in /proc/PID/comm.
	Comm string
	// Args is the full argv, argv[0] included.
	Args []string
	// Exe is the resolved executable path; empty when it could not be read.
	Exe string
	// Cgroup is the cgroup v2 path (e.g. /kubepods.slice/...), or on a pure
	// v1 node the path in the freezer hierarchy.
	Cgroup string
	// Start is the exec time (from the kernel) or the start time (procfs
	// scan), on the boot-time clock (CLOCK_BOOTTIME, since boot). Deadlines
	// count from it.
	Start time.Duration
	// Born is the task's start time (fork), on the boot-time clock, as
	// /proc/PID/stat starttime gives it: with the PID it names the process
	// uniquely, so a reused PID is never mistaken for it.
	Born time.Duration
	// Zombie: a scan found it exited and not yet reaped by its parent.
	Zombie bool
	// Held (exec events): the kernel stopped it at exec; it waits for
	// Enforcer.Resume or its end.
	Held bool
}

// FileOp is what a tracked process did to a path.
type FileOp uint8

const (
	// FileCreate: an open that created a regular file (FMODE_CREATED or O_EXCL).
	FileCreate FileOp = iota + 1
	// FileMkdir: a directory was created.
	FileMkdir
	// FileSymlink: a symlink was created.
	FileSymlink
	// FileLink: a hard link was created (a new name, not a new inode).
	FileLink
	// FileRename: Path was renamed to NewPath.
	FileRename
	// FileUnlink: Path (a file, symlink or directory) was removed.
	FileUnlink
	// FileOpen: an open with O_CREAT found the file already there: the
	// process used it but did not create it.
	FileOpen
)

func (o FileOp) String() string {
	switch o {
	case FileCreate:
		return "create"
	case FileMkdir:
		return "mkdir"
	case FileSymlink:
		return "symlink"
	case FileLink:
		return "link"
	case FileRename:
		return "rename"
	case FileUnlink:
		return "unlink"
	case FileOpen:
		return "open"
	}
	return "unknown"
}

// FileEvent describes one change a tracked process made to the filesystem.
type FileEvent struct {
	Op FileOp
	// Path is absolute and cleaned, as seen in the process's own mount
	// namespace and root (a container's /tmp, not the node's).
	Path string
	// NewPath is the destination of a rename.
	NewPath string
	// Dev and Ino identify the created object (user-space st_dev encoding);
	// zero when unknown.
	Dev, Ino uint64
}

// Event is one decoded observation of the node.
type Event struct {
	Type EventType
	// Time is when it happened, on the boot-time clock.
	Time time.Duration
	// PID is the thread-group id of the process the event is about (for a
	// fork: the new child).
	PID int
	// Born is the start time (fork) of process PID, on the boot-time clock.
	Born time.Duration
	// PPID is the parent's thread-group id (exec, fork).
	PPID int
	// Proc is set for EventExec.
	Proc *Process
	// ExitCode is a wait(2)-style status for EventExit: (code << 8) | signal.
	ExitCode int
	// File is set for EventFile.
	File *FileEvent
	// Lost is the number of events dropped, for EventLost.
	Lost uint64
}
