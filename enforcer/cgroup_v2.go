package enforcer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// v2 drives a cgroup v2 hierarchy mounted at mount (/sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one). freeze: the kernel
// has no cgroup.kill (before 5.14), so kill freezes, kills each member and
// thaws.
type v2 struct {
	mount  string
	freeze bool
}

func (h v2) load(group string) (*cgroup2.Manager, error) {
	return cgroup2.Load(group, cgroup2.WithMountpoint(h.mount))
}

func (h v2) dir(group string) string { return filepath.Join(h.mount, group) }

func (h v2) exists(group string) bool {
	_, err := os.Stat(filepath.Join(h.dir(group), "cgroup.procs"))
	return err == nil
}

// create makes group as a child of its parent. The parent must already
// exist: NewManager would MkdirAll missing ancestors and write
// cgroup.subtree_control in every ancestor, and those cgroups are not ours.
func (h v2) create(group string) error {
	parent := filepath.Dir(group)
	if !h.exists(parent) {
		return fmt.Errorf("origin cgroup %s: %w", h.dir(parent), os.ErrNotExist)
	}
	m, err := h.load(parent)
	if err != nil {
		return err
	}
	// nil resources: enable no controller, write nothing but the mkdir.
	_, err = m.NewChild(filepath.Base(group), nil)
	return err
}

func (h v2) add(group string, pid int) error {
	m, err := h.load(group)
	if err != nil {
		return err
	}
	return m.AddProc(uint64(pid))
}

func (h v2) procs(group string) ([]int, error) { return readProcs(h.dir(group)) }

// kill writes cgroup.kill through the library, or without it freezes the
// group, kills each member through sigkill and thaws. The existence check
// keeps the library off its own fallback (freeze and kill(2) by bare PID)
// when the group has gone.
func (h v2) kill(group string, sigkill func(pid int) error) error {
	if !h.exists(group) {
		return fmt.Errorf("kill %s: %w", h.dir(group), os.ErrNotExist)
	}
	if h.freeze {
		return h.freezeKill(group, sigkill)
	}
	m, err := h.load(group)
	if err != nil {
		return err
	}
	return m.Kill()
}

// freezeKill is the kill of kernels without cgroup.kill (cgroup.freeze is
// 5.2): freeze so that nothing inside forks or escapes, SIGKILL every
// member through sigkill (a pidfd, membership checked), thaw. A frozen
// task dies of SIGKILL on v2; the thaw is for whatever the kill missed
// (a task that joined after the read), so it is not left stopped. Tree
// cgroups are leaves the enforcer made: the members are cgroup.procs.
func (h v2) freezeKill(group string, sigkill func(pid int) error) error {
	dir := h.dir(group)
	ctl := filepath.Join(dir, "cgroup.freeze")
	var errs []error
	if err := os.WriteFile(ctl, []byte("1"), 0); err != nil {
		// Kill what is there all the same: a fork may slip through.
		errs = append(errs, fmt.Errorf("freeze %s: %w", dir, err))
	} else if err := waitFrozen(dir, freezeTimeout); err != nil && !errors.Is(err, errFreezeTimeout) {
		errs = append(errs, err)
	}
	// After freezeTimeout (a task in uninterruptible sleep delays the
	// freeze) SIGKILL goes out anyway: it is delivered when the task wakes.
	pids, err := h.procs(group)
	if err != nil {
		errs = append(errs, err)
	}
	for _, pid := range pids {
		if err := sigkill(pid); err != nil && !exited(err) && !errors.Is(err, errNotMember) {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	if err := os.WriteFile(ctl, []byte("0"), 0); err != nil && h.exists(group) {
		errs = append(errs, fmt.Errorf("thaw %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

var errFreezeTimeout = errors.New("not frozen in time")

// waitFrozen polls dir/cgroup.events until it reads "frozen 1", for at
// most d.
func waitFrozen(dir string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if sc.Text() == "frozen 1" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w after %v", dir, errFreezeTimeout, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// remove is a plain rmdir: the library's Delete retries with sleeps, and
// the agent's event loop must never sleep.
func (h v2) remove(group string) error { return unix.Rmdir(h.dir(group)) }

func (h v2) mountpoint() string { return h.mount }
