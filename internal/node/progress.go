package node

import "time"

// Member names one process of a tree for a progress sample: its PID and
// its start time, so a PID reused by another process is never read for it.
type Member struct {
	PID  int
	Born time.Duration
}

// Usage is what one process has done since it started, as the kernel
// counts it for the whole thread group.
type Usage struct {
	PID  int
	Born time.Duration
	// IO is rchar + wchar of /proc/PID/io: bytes passed to read and write
	// calls of any kind (files, pipes, sockets), so network I/O to a
	// backend counts too. It includes exited threads and reaped children.
	IO uint64
	// Calls is syscr + syscw: the read and write calls that moved them.
	Calls uint64
	// CPU is utime + stime of /proc/PID/stat, every thread.
	CPU time.Duration
}

// Blocked says what a process that outlived SIGKILL is waiting for, as far
// as the kernel shows it.
type Blocked struct {
	// State is the state letter and name from /proc/PID/stat ("D" is
	// uninterruptible sleep).
	State string `json:"state"`
	// Wchan is the kernel function the process sleeps in.
	Wchan string `json:"wchan,omitempty"`
	// Stack is the kernel stack (/proc/PID/stack), innermost first, where
	// readable.
	Stack []string `json:"stack,omitempty"`
	// FSType, MountPoint and Source describe the mount the process is
	// blocked on: the network or FUSE filesystem of one of its open files
	// or of its working directory (paths as the process sees them).
	FSType     string `json:"fs_type,omitempty"`
	MountPoint string `json:"mount_point,omitempty"`
	Source     string `json:"source,omitempty"`
	// File is the open file (or the working directory) on that mount.
	File string `json:"file,omitempty"`
}
