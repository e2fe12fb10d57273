package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"golang.org/x/sys/unix"
)

// freezeTimeout bounds how long a v1 freeze may stay FREEZING (a task in
// uninterruptible sleep delays it). SIGKILL is sent anyway after it: a task
// that is still freezing gets it on thaw.
const freezeTimeout = 2 * time.Second

// v1 drives the cgroup v1 freezer hierarchy mounted at mount
// (/sys/fs/cgroup/freezer). Only the freezer is used: it is the one v1
// controller that can stop a tree so that no member forks while it is killed.
type v1 struct{ mount string }

// hierarchy gives the library the freezer alone, rooted at our mount. The
// library's freezer joins its root with "freezer", so mount must end in it
// (New checks).
func (h v1) hierarchy() cgroup1.InitOpts {
	return cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) {
		return []cgroup1.Subsystem{cgroup1.NewFreezer(filepath.Dir(h.mount))}, nil
	})
}

func (h v1) load(group string) (cgroup1.Cgroup, error) {
	return cgroup1.Load(cgroup1.StaticPath(group), h.hierarchy())
}

func (h v1) dir(group string) string { return filepath.Join(h.mount, group) }

func (h v1) exists(group string) bool {
	_, err := os.Stat(filepath.Join(h.dir(group), "cgroup.procs"))
	return err == nil
}

func (h v1) create(group string) error {
	if !h.exists(filepath.Dir(group)) {
		return fmt.Errorf("origin cgroup %s: %w", h.dir(filepath.Dir(group)), os.ErrNotExist)
	}
	_, err := cgroup1.New(cgroup1.StaticPath(group), nil, h.hierarchy())
	return err
}

func (h v1) add(group string, pid int) error {
	cg, err := h.load(group)
	if err != nil {
		return err
	}
	return cg.AddProc(uint64(pid), cgroup1.Freezer)
}

func (h v1) procs(group string) ([]int, error) { return readProcs(h.dir(group)) }

// kill freezes the group so nothing inside can fork or exit, sends SIGKILL
// to every member through sigkill (pidfd, checked membership), then thaws
// so the signals are delivered.
func (h v1) kill(group string, sigkill func(pid int) error) error {
	cg, err := h.load(group)
	if err != nil {
		return err
	}
	if err := h.freeze(group); err != nil {
		return fmt.Errorf("freeze %s: %w", h.dir(group), err)
	}
	pids, perr := h.procs(group)
	var errs []error
	if perr != nil {
		errs = append(errs, perr)
	}
	for _, pid := range pids {
		if err := sigkill(pid); err != nil && !exited(err) {
			errs = append(errs, err)
		}
	}
	if err := cg.Thaw(); err != nil {
		errs = append(errs, fmt.Errorf("thaw %s: %w", h.dir(group), err))
	}
	return errors.Join(errs...)
}

// freeze writes freezer.state directly: the library's Freeze waits for
// FROZEN without any bound, and one task stuck in D state would hang Kill.
func (h v1) freeze(group string) error {
	state := filepath.Join(h.dir(group), "freezer.state")
	deadline := time.Now().Add(freezeTimeout)
	for {
		if err := os.WriteFile(state, []byte("FROZEN"), 0); err != nil {
			return err
		}
		b, err := os.ReadFile(state)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == "FROZEN" || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
}

// remove is a plain rmdir (the hierarchy holds only the freezer): the
// library's Delete retries with sleeps, and the agent's loop must not sleep.
func (h v1) remove(group string) error { return unix.Rmdir(h.dir(group)) }

func (h v1) mountpoint() string { return h.mount }
