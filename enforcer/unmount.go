package enforcer

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// ForceUnmount detaches mountPoint, a path in the mount namespace of
// process pid (started at born), with MNT_FORCE | MNT_DETACH, as
// `umount -f -l` would there: a dead NFS or FUSE server's pending requests
// are aborted, so a process sleeping uninterruptibly on them can die, and
// the mount goes from the namespace. The namespace is entered through a
// pidfd checked against born, so it is never another process's.
func (e *Enforcer) ForceUnmount(pid int, born time.Duration, mountPoint string) error {
	fd, err := openPidfd(e.procRoot, pid, born)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", mountPoint, err)
	}
	defer unix.Close(fd)
	errc := make(chan error, 1)
	go func() {
		// This thread leaves the agent's mount namespace: it is never
		// unlocked, so it ends with this goroutine instead of running
		// other goroutines there.
		runtime.LockOSThread()
		// setns into a mount namespace refuses a thread that shares its
		// filesystem information (cwd, root) with others.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("enter the mount namespace of pid %d: %w", pid, err)
			return
		}
		errc <- unix.Unmount(mountPoint, unix.MNT_FORCE|unix.MNT_DETACH)
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("unmount %s: %w", mountPoint, err)
	}
	return nil
}
