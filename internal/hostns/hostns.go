// Package hostns brings the agent's process into the namespaces it needs,
// before anything else runs: the host's cgroup namespace, and, when the
// node has no tracefs mounted, a mount namespace of its own with tracefs
// mounted in it, so that nothing on the host changes.
//
// Namespaces belong to threads, and a Go program has many, so both are
// entered on one locked thread that then executes the program again: the
// new image starts, single-threaded, in them.
package hostns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrHostCgroupNSUnknown: the agent is not in the initial cgroup namespace
// and cannot read the host's (PID 1's, or kthreadd's), so it cannot join
// it. It runs on; cgroup paths that read as "/.." then show the problem.
var ErrHostCgroupNSUnknown = errors.New("cannot tell the host cgroup namespace")

// marker is set in the environment of the re-executed process: it lists
// what was done, so a second pass never loops and the agent can log it.
const marker = "OVERTIME_HOSTNS"

// initCgroupNS is the inode of the kernel's initial cgroup namespace
// (PROC_CGROUP_INIT_INO): a process that sees it is in the host's.
const initCgroupNS = 0xEFFFFFFB

// TracefsDir is where tracefs is mounted when the node has none.
const TracefsDir = "/sys/kernel/tracing"

// Done says what Prepare did, for the start-up log.
type Done struct {
	JoinedCgroupNS bool // re-entered the host cgroup namespace
	MountedTracefs bool // mounted tracefs at TracefsDir in a private mount namespace
}

func (d Done) String() string {
	var s []string
	if d.JoinedCgroupNS {
		s = append(s, "cgroupns")
	}
	if d.MountedTracefs {
		s = append(s, "tracefs")
	}
	return strings.Join(s, ",")
}

// Prepare makes the process run in the host cgroup namespace and with a
// tracefs reachable, re-executing it when either needs doing. It returns
// what was done (after the re-exec), or an error naming what is missing and
// how to fix it; ErrHostCgroupNSUnknown is a warning, with the rest done.
// After a successful re-exec it does not return.
func Prepare(procRoot string) (Done, error) {
	if v, ok := os.LookupEnv(marker); ok {
		os.Unsetenv(marker)
		return recheck(procRoot, v)
	}
	var want Done
	var warn error
	cgfd, err := hostCgroupNS(procRoot)
	switch {
	case errors.Is(err, ErrHostCgroupNSUnknown):
		warn = err
	case err != nil:
		return Done{}, err
	case cgfd >= 0:
		defer unix.Close(cgfd)
		want.JoinedCgroupNS = true
	}
	want.MountedTracefs = !TracefsReachable()
	if !want.JoinedCgroupNS && !want.MountedTracefs {
		return Done{}, warn
	}

	exe, err := os.Executable()
	if err != nil {
		return Done{}, fmt.Errorf("find own executable: %w", err)
	}
	runtime.LockOSThread()
	// The thread stays locked: if anything below fails it may be in other
	// namespaces than its siblings and must not run other goroutines.
	if want.JoinedCgroupNS {
		if err := unix.Setns(cgfd, unix.CLONE_NEWCGROUP); err != nil {
			return Done{}, fmt.Errorf("join the host cgroup namespace (needs CAP_SYS_ADMIN): %w", err)
		}
	}
	if want.MountedTracefs {
		if err := mountTracefs(); err != nil {
			return Done{}, err
		}
	}
	env := append(os.Environ(), marker+"="+want.String())
	return Done{}, fmt.Errorf("re-exec in the prepared namespaces: %w", syscall.Exec(exe, os.Args, env))
}

// recheck runs in the re-executed process: what was asked for must hold.
func recheck(procRoot, asked string) (Done, error) {
	parts := strings.Split(asked, ",")
	d := Done{JoinedCgroupNS: slices.Contains(parts, "cgroupns"), MountedTracefs: slices.Contains(parts, "tracefs")}
	if d.JoinedCgroupNS {
		fd, err := hostCgroupNS(procRoot)
		if fd >= 0 {
			unix.Close(fd)
			return d, fmt.Errorf("still outside the host cgroup namespace after joining it")
		}
		if err != nil && !errors.Is(err, ErrHostCgroupNSUnknown) {
			return d, err
		}
	}
	if d.MountedTracefs && !TracefsReachable() {
		return d, fmt.Errorf("tracefs mounted at %s is not reachable after the re-exec", TracefsDir)
	}
	return d, nil
}

// hostCgroupNS returns an open descriptor of the host's cgroup namespace
// when the process is outside it, -1 when it is inside (or the kernel has
// no cgroup namespaces).
func hostCgroupNS(procRoot string) (int, error) {
	self, err := nsInode(filepath.Join(procRoot, "self/ns/cgroup"))
	if err != nil || self == initCgroupNS {
		return -1, nil
	}
	// PID 1 is the node's init under hostPID (on a nested node, such as
	// kind's, the node container's init: its namespace is the one to
	// join); kthreadd (PID 2) is in the initial namespace and readable
	// where a hardened init may not be.
	var errs []string
	for _, pid := range []string{"1", "2"} {
		p := filepath.Join(procRoot, pid, "ns/cgroup")
		ino, err := nsInode(p)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if ino == self {
			return -1, nil
		}
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Sprintf("open %s: %v", p, err))
			continue
		}
		return fd, nil
	}
	return -1, fmt.Errorf("%w: the agent runs in cgroup namespace %d, not the host's, and cannot open the host's (hostPID and CAP_SYS_PTRACE are needed): %s",
		ErrHostCgroupNSUnknown, self, strings.Join(errs, "; "))
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// TracefsReachable says whether the tracepoint files are where the eBPF
// loader looks: tracefs at /sys/kernel/tracing, or debugfs at
// /sys/kernel/debug with tracefs below it.
func TracefsReachable() bool {
	for _, p := range []string{TracefsDir, "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			if _, err := os.Stat(filepath.Join(p, "events")); err == nil {
				return true
			}
		}
	}
	return false
}

// mountTracefs gives the calling thread a mount namespace of its own
// (a slave of the current one, so the host's unmounts still reach it and
// no mount is kept alive by the agent) and mounts tracefs there.
func mountTracefs() error {
	fix := fmt.Sprintf("mount it on the node with `mount -t tracefs tracefs %s`, or give the agent CAP_SYS_ADMIN", TracefsDir)
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("tracefs is not mounted at %s and the agent cannot make a mount namespace to mount it in (%v): %s", TracefsDir, err, fix)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make the agent's mount namespace a slave of the node's: %w", err)
	}
	if err := unix.Mount("tracefs", TracefsDir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted at %s and the agent cannot mount it (%v): %s", TracefsDir, err, fix)
	}
	return nil
}

// PrepareTestBinary is Prepare for a test binary that loads eBPF programs:
// run as root, it brings up what the tests need the way the agent does, so
// they run on a node where nothing was mounted by hand. It exits the
// process on an error.
func PrepareTestBinary() {
	if os.Geteuid() != 0 {
		return
	}
	if _, err := Prepare("/proc"); err != nil && !errors.Is(err, ErrHostCgroupNSUnknown) {
		fmt.Fprintln(os.Stderr, "prepare the test binary's namespaces:", err)
		os.Exit(1)
	}
}
