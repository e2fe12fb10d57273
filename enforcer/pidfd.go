package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/procstat"
)

// openPidfd opens a pidfd for pid and, when born is not negative, checks
// that the process it refers to started at born. The pidfd is opened first:
// once it is held the process it names cannot be replaced, so a start time
// that still matches afterwards (while the pidfd says the process is alive)
// proves /proc/PID was the same process.
func openPidfd(procRoot string, pid int, born time.Duration) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	if born < 0 {
		return fd, nil
	}
	stat, err := procstat.ReadStat(procRoot, pid)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	if st, want := stat.Start, procstat.BootToTicks(born); st != want {
		unix.Close(fd)
		return -1, fmt.Errorf("pid %d: start time %d ticks, want %d: %w", pid, st, want, ErrPIDReused)
	}
	// The stat read could have come from a successor if ours died between
	// pidfd_open and the read; a live pidfd rules that out.
	if err := pidfdSignal(fd, 0); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("pid %d: %w", pid, err)
	}
	return fd, nil
}

// pidfdSignal sends sig through a pidfd; sig 0 only checks that the process
// is alive.
func pidfdSignal(fd int, sig syscall.Signal) error {
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// exited reports whether err says the process is gone.
func exited(err error) bool {
	return errors.Is(err, unix.ESRCH)
}

// cgroupOf reads pid's cgroup from procRoot/PID/cgroup: the "0::" line for
// cgroup v2, or the line whose controller list holds "freezer" for v1.
func cgroupOf(procRoot string, pid int, v1 bool) (string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", err
	}
	return parseCgroupFile(string(b), v1)
}

func parseCgroupFile(content string, v1 bool) (string, error) {
	b, ok := procstat.CgroupPath([]byte(content), v1)
	if !ok {
		if v1 {
			return "", errors.New("no freezer line in cgroup file")
		}
		return "", errors.New("no cgroup v2 (0::) line in cgroup file")
	}
	p := string(b)
	// A path outside our cgroup namespace reads "/../.."; we cannot
	// reach it through our mount, so refuse it rather than guess.
	if !strings.HasPrefix(p, "/") || filepath.Clean(p) != p || strings.Contains(p, "/..") {
		return "", fmt.Errorf("cgroup path %q is outside this cgroup namespace", p)
	}
	return p, nil
}

// waitExit polls a pidfd until the process exits or d passes.
func waitExit(fd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			return true
		}
		if left == 0 || err != nil {
			return false
		}
	}
}

// Resume continues a process the kernel stopped at exec: SIGCONT through a
// pidfd, once its start time proves the PID still names it.
func (e *Enforcer) Resume(pid int, born time.Duration) error {
	return Resume(e.procRoot, pid, born)
}

// Resume is Enforcer.Resume for a process that has no enforcer (the hold
// guard), with procfs at procRoot.
func Resume(procRoot string, pid int, born time.Duration) error {
	fd, err := openPidfd(procRoot, pid, born)
	if err != nil {
		return fmt.Errorf("resume %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if err := pidfdSignal(fd, unix.SIGCONT); err != nil && !exited(err) {
		return fmt.Errorf("resume %d: %w", pid, err)
	}
	return nil
}
