package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrHostCgroupNSUnknown: PID 1's cgroup namespace cannot be read, so the
// agent cannot tell whether it shares it. It runs on; cgroup paths that read
// as "/.." then show it is not.
var ErrHostCgroupNSUnknown = errors.New("cannot tell the host cgroup namespace")

// reexecMarker is set in the environment of the re-executed agent, so a
// failed join can never loop.
const reexecMarker = "OVERTIME_HOST_CGROUPNS"

// JoinHostCgroupNamespace makes the agent live in the cgroup namespace of
// PID 1 (in procRoot), re-executing itself there when it is not already.
//
// With cgroup v2, container runtimes give each container a private cgroup
// namespace: /proc/PID/cgroup then reads relative to the agent's own
// container ("/../../kubepods-..."), and the kernel refuses to move a
// process between cgroups that are not both inside the writer's namespace.
// Namespaces belong to threads, and a Go program has many, so joining is
// done on one locked thread that then execs: the new image starts, single
// threaded, in the host namespace. It returns only when nothing needs doing
// (or on an error); after a successful exec it does not return.
func JoinHostCgroupNamespace(procRoot string) error {
	self, err := nsInode(filepath.Join(procRoot, "self/ns/cgroup"))
	if err != nil {
		return nil // no cgroup namespaces on this kernel: nothing to join
	}
	host, err := nsInode(filepath.Join(procRoot, "1/ns/cgroup"))
	if err != nil {
		return fmt.Errorf("%w: read %s/1/ns/cgroup (hostPID and CAP_SYS_PTRACE needed): %v", ErrHostCgroupNSUnknown, procRoot, err)
	}
	if self == host {
		return nil
	}
	if os.Getenv(reexecMarker) != "" {
		return fmt.Errorf("still outside the host cgroup namespace after joining it")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	fd, err := unix.Open(filepath.Join(procRoot, "1/ns/cgroup"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the host cgroup namespace: %w", err)
	}
	defer unix.Close(fd)
	runtime.LockOSThread()
	// The thread stays locked: if the exec fails it is in another
	// namespace than its siblings and must not run other goroutines.
	if err := unix.Setns(fd, unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("join the host cgroup namespace (needs CAP_SYS_ADMIN): %w", err)
	}
	env := append(os.Environ(), reexecMarker+"=1")
	return fmt.Errorf("re-exec in the host cgroup namespace: %w", syscall.Exec(exe, os.Args, env))
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
