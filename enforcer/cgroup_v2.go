package enforcer

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// v2 drives a cgroup v2 hierarchy mounted at mount (/sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one).
type v2 struct{ mount string }

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

// kill writes cgroup.kill through the library. New refused kernels without
// cgroup.kill, and the existence check keeps the library off its fallback
// (freeze and kill(2) by bare PID) when the group has gone.
func (h v2) kill(group string, _ func(pid int) error) error {
	if !h.exists(group) {
		return fmt.Errorf("kill %s: %w", h.dir(group), os.ErrNotExist)
	}
	m, err := h.load(group)
	if err != nil {
		return err
	}
	return m.Kill()
}

// remove is a plain rmdir: the library's Delete retries with sleeps, and
// the agent's event loop must never sleep.
func (h v2) remove(group string) error { return unix.Rmdir(h.dir(group)) }

func (h v2) mountpoint() string { return h.mount }
