package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroup is the bench's own cgroup v2 directory. Every process the bench
// measures is started inside it (or a child of it), so ending them is one
// cgroup.kill that cannot reach anything else.
type cgroup struct {
	root string // the cgroup v2 mount
	dir  string // absolute directory
}

func cgroup2Mount() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
				return p, nil
			}
		}
	}
	return "", errors.New("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

func newCgroup(name string) (*cgroup, error) {
	root, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make bench cgroup: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("bench cgroup has no cgroup.kill (kernel before 5.14?): %w", err)
	}
	return &cgroup{root: root, dir: dir}, nil
}

// pathOf is dir as /proc/PID/cgroup shows it.
func (c *cgroup) pathOf(dir string) string {
	rel, _ := filepath.Rel(c.root, dir)
	return "/" + filepath.ToSlash(rel)
}

func (c *cgroup) mkdir(name string) (string, error) {
	dir := filepath.Join(c.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	return dir, nil
}

// killAll SIGKILLs every process in the bench cgroup and its descendants
// (cgroup.kill is recursive) and waits until they are all gone.
func (c *cgroup) killAll() error {
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill bench cgroup: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := c.populated()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench cgroup still holds processes 10s after cgroup.kill")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// populated reads cgroup.events: 1 while any process lives in the subtree.
func (c *cgroup) populated() int {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.events"))
	if err != nil {
		return 0
	}
	if bytes.Contains(b, []byte("populated 1")) {
		return 1
	}
	return 0
}

// removeChildren removes every cgroup below the bench cgroup, deepest
// first (the agent's tree cgroups it did not remove itself included).
func (c *cgroup) removeChildren() error {
	if c == nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != c.dir {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	var errs []error
	for _, d := range dirs {
		if err := rmdirRetry(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *cgroup) remove() error {
	if c == nil {
		return nil
	}
	_ = c.killAll()
	if err := c.removeChildren(); err != nil {
		return err
	}
	return rmdirRetry(c.dir)
}

// rmdirRetry removes a cgroup directory, waiting for tasks that are still
// finishing their exit.
func rmdirRetry(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// treeCgroups lists the agent's tree cgroups (overtime.<rule>.<pid>.<ns>)
// directly under dir: pid → exec time on the boot clock.
func treeCgroups(dir string) map[int]time.Duration {
	out := map[int]time.Duration{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		parts := strings.Split(e.Name(), ".")
		if len(parts) != 4 || parts[0] != "overtime" {
			continue
		}
		var pid int
		var ns int64
		if _, err := fmt.Sscan(parts[2], &pid); err != nil {
			continue
		}
		if _, err := fmt.Sscan(parts[3], &ns); err != nil {
			continue
		}
		out[pid] = time.Duration(ns)
	}
	return out
}
