package enforcer

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/treename"
)

var (
	// ErrUnconfined wraps a Confine error after which the member is still
	// watched through its pidfd (signalled and killed through it) but is not
	// in the tree's cgroup.
	ErrUnconfined = errors.New("not confined to the tree cgroup")
	// ErrPIDReused is returned when a pid's start time does not match the
	// one the caller saw: the pid now names another process.
	ErrPIDReused = errors.New("pid reused")
	// ErrUnknownTree is returned by Signal and Kill for a tree that was
	// never confined or adopted: none of its processes is known, as each
	// exited before it could be confined. It says so by shape (Gone).
	ErrUnknownTree error = unknownTree{}
)

type unknownTree struct{}

func (unknownTree) Error() string { return "unknown tree" }
func (unknownTree) Gone() bool    { return true }

// busyError: the tree cgroup still holds tasks that are finishing their
// exit (the exit tracepoint fires before the kernel takes a task out of its
// cgroup). Release does not wait: callers test for it by shape (a Busy
// method) and retry a little later, without blocking their event loop.
type busyError struct{ err error }

func (b busyError) Error() string { return b.err.Error() }
func (b busyError) Unwrap() error { return b.err }

// Busy reports that the cgroup is not empty yet.
func (busyError) Busy() bool { return true }

// Options configure New. The zero value detects everything.
type Options struct {
	Mode     string // "" = detect, or "unified", "hybrid", "legacy"
	Root     string // override the cgroup mount (tests)
	ProcRoot string // default /proc
	Prefix   string // default treename.Prefix; tree names start with Prefix+"."
	Logger   *slog.Logger
	// FreezeKill makes a v2 hierarchy end trees by freeze-kill-thaw
	// (cgroup.freeze) even where the kernel has cgroup.kill: the path of
	// kernels before 5.14, driven on newer ones by the tests.
	FreezeKill bool
}

// Enforcer confines process trees to cgroups of their own and acts on them.
// It is safe for concurrent use.
type Enforcer struct {
	mode     string
	h        hierarchy
	v1       bool
	procRoot string
	prefix   string
	log      *slog.Logger
	// noLease makes Remove skip the lease check and scan /proc, as on a
	// filesystem without leases (tests).
	noLease bool

	mu    sync.Mutex
	trees map[string]*tree
	// sweeps are the background cgroup sweeps of Kill: cgroup.kill, or
	// freeze-kill-thaw.
	sweeps sync.WaitGroup
}

// tree is one tracked process tree.
type tree struct {
	mu      sync.Mutex
	group   string      // the tree's cgroup, relative to the mount; "" until known
	origin  string      // the cgroup the root came from (parent of group)
	members map[int]int // pid → pidfd
	rootFD  int         // O_PATH fd of the root process's / (-1: none)
	mntFD   int         // its mount namespace, which keeps rootFD's mounts attached
	// sweeping counts the tree's cgroup sweeps still running: Release
	// waits for them (as busy) so it never moves tasks out of a cgroup a
	// sweep has frozen.
	sweeping atomic.Int32
}

// New detects (or takes from opts) the cgroup layout and checks that it can
// be driven.
func New(opts Options) (*Enforcer, error) {
	e := &Enforcer{
		procRoot: orDefault(opts.ProcRoot, "/proc"),
		prefix:   orDefault(opts.Prefix, treename.Prefix),
		log:      opts.Logger,
		trees:    make(map[string]*tree),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	routeLibraryLogs(e.log)
	if strings.ContainsAny(e.prefix, "/\x00") || e.prefix == "." || e.prefix == ".." {
		return nil, fmt.Errorf("enforcer prefix %q: must be a plain name", e.prefix)
	}
	mode, h, err := detect(opts)
	if err != nil {
		return nil, err
	}
	e.mode, e.h = mode, h
	_, e.v1 = h.(v1)
	e.log.Info("enforcer ready", "mode", e.mode, "cgroup_mount", h.mountpoint(), "v1_freezer", e.v1, "kill", e.KillMethod())
	return e, nil
}

// Kill methods, as KillMethod names them.
const (
	KillCgroupKill = "cgroup.kill"           // v2, 5.14 and later
	KillV2Freeze   = "cgroup.freeze+SIGKILL" // v2 before 5.14: freeze, kill each, thaw
	KillV1Freezer  = "freezer.state+SIGKILL" // the v1 freezer: freeze, kill each, thaw
)

// KillMethod says how Kill ends what is in a tree's cgroup.
func (e *Enforcer) KillMethod() string {
	switch h := e.h.(type) {
	case v1:
		return KillV1Freezer
	case v2:
		if h.freeze {
			return KillV2Freeze
		}
	}
	return KillCgroupKill
}

// Mode is the cgroup layout: "unified", "hybrid" or "legacy".
func (e *Enforcer) Mode() string { return e.mode }

// V1 reports whether trees live in the v1 freezer hierarchy, so callers must
// read the freezer line of /proc/PID/cgroup rather than the "0::" one.
func (e *Enforcer) V1() bool { return e.v1 }

func (e *Enforcer) checkName(name string) error {
	if !strings.HasPrefix(name, e.prefix+".") || strings.ContainsAny(name, "/\x00\n") {
		return fmt.Errorf("tree name %q: must start with %q and hold no '/'", name, e.prefix+".")
	}
	return nil
}

func (e *Enforcer) lookup(name string, create bool) *tree {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.trees[name]
	if t == nil && create {
		t = &tree{members: make(map[int]int), rootFD: -1, mntFD: -1}
		e.trees[name] = t
	}
	return t
}

// goneError marks a Confine error after which there is nothing to track:
// the process exited, or its PID now names another process. Callers test
// for it by shape, with a Gone method.
type goneError struct{ err error }

func (g goneError) Error() string { return g.err.Error() }
func (g goneError) Unwrap() error { return g.err }

// Gone reports that the process no longer exists.
func (goneError) Gone() bool { return true }

// Confine implements agent.Enforcer.
func (e *Enforcer) Confine(name string, pid int, born time.Duration, view bool) error {
	if err := e.checkName(name); err != nil {
		return err
	}
	fd, err := openPidfd(e.procRoot, pid, born)
	if err != nil {
		if errors.Is(err, unix.ESRCH) || errors.Is(err, ErrPIDReused) || errors.Is(err, fs.ErrNotExist) {
			err = goneError{err}
		}
		return fmt.Errorf("confine %s: %w", name, err)
	}
	t := e.lookup(name, true)
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.members[pid]; ok {
		unix.Close(old)
	}
	t.members[pid] = fd

	cur, err := cgroupOf(e.procRoot, pid, e.v1)
	if err == nil && pidfdSignal(fd, 0) != nil {
		return fmt.Errorf("confine %s: %w", name, goneError{fmt.Errorf("pid %d exited", pid)})
	}
	if err != nil {
		return fmt.Errorf("confine %s: pid %d: %w: %v", name, pid, ErrUnconfined, err)
	}
	if t.group == "" {
		if path.Base(cur) == name {
			// Already in a cgroup of this name: an earlier run confined it
			// and this one did not Adopt.
			t.group, t.origin = cur, path.Dir(cur)
		} else {
			t.group, t.origin = path.Join(cur, name), cur
		}
	}
	if view && t.rootFD < 0 {
		if err := e.keepView(t, pid, fd); err != nil {
			e.log.Warn("cannot keep the tree's filesystem view; cleanup will skip it", "tree", name, "pid", pid, "err", err)
		}
	}
	if cur == t.group {
		return nil // born inside after an earlier move
	}
	if !e.h.exists(t.group) {
		if err := e.h.create(t.group); err != nil {
			return fmt.Errorf("confine %s: pid %d: %w: create cgroup %s: %v", name, pid, ErrUnconfined, t.group, err)
		}
	}
	if err := e.h.add(t.group, pid); err != nil {
		return fmt.Errorf("confine %s: pid %d: %w: move to %s: %v", name, pid, ErrUnconfined, t.group, err)
	}
	// cgroup.procs takes a bare PID. If ours died just before the write, the
	// number may have named a newcomer; put whatever now holds it back.
	if err := pidfdSignal(fd, 0); exited(err) {
		if c, err := cgroupOf(e.procRoot, pid, e.v1); err == nil && c == t.group {
			_ = e.h.add(cur, pid)
		}
		return fmt.Errorf("confine %s: %w", name, goneError{fmt.Errorf("pid %d exited while being moved", pid)})
	}
	e.log.Debug("confined", "tree", name, "pid", pid, "cgroup", t.group)
	return nil
}

// keepView opens the root process's / and mount namespace, then checks the
// pidfd again so both belong to that process and not a successor.
func (e *Enforcer) keepView(t *tree, pid, pidfd int) error {
	dir := filepath.Join(e.procRoot, strconv.Itoa(pid))
	rfd, err := unix.Open(filepath.Join(dir, "root"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open root: %w", err)
	}
	nfd, err := unix.Open(filepath.Join(dir, "ns", "mnt"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(rfd)
		return fmt.Errorf("open mount namespace: %w", err)
	}
	if err := pidfdSignal(pidfd, 0); err != nil {
		unix.Close(rfd)
		unix.Close(nfd)
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	t.rootFD, t.mntFD = rfd, nfd
	return nil
}

// Forget implements agent.Enforcer.
func (e *Enforcer) Forget(name string, pid int) {
	t := e.lookup(name, false)
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if fd, ok := t.members[pid]; ok {
		unix.Close(fd)
		delete(t.members, pid)
	}
}

// errNotMember: a PID listed in the cgroup left it (or was reused) before
// it could be signalled.
var errNotMember = errors.New("not in the tree cgroup")

// signalInGroup signals a PID read from group's cgroup.procs: it opens a
// pidfd first, then checks that the process it names is still in group, so
// the signal cannot reach a process that took over the number.
func (e *Enforcer) signalInGroup(group string, pid int, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cur, err := cgroupOf(e.procRoot, pid, e.v1)
	if errors.Is(err, fs.ErrNotExist) {
		return unix.ESRCH
	}
	if err != nil {
		return err
	}
	if cur != group {
		return errNotMember
	}
	return pidfdSignal(fd, sig)
}

// Signal implements agent.Enforcer.
func (e *Enforcer) Signal(name string, sig syscall.Signal) (int, error) {
	t := e.lookup(name, false)
	if t == nil {
		return 0, fmt.Errorf("signal %s: %w", name, ErrUnknownTree)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	var errs []error
	seen := make(map[int]bool)
	if t.group != "" && e.h.exists(t.group) {
		pids, err := e.h.procs(t.group)
		if err != nil {
			errs = append(errs, err)
		}
		for _, pid := range pids {
			switch err := e.signalInGroup(t.group, pid, sig); {
			case err == nil:
				n++
				seen[pid] = true
			case exited(err):
				seen[pid] = true
			case errors.Is(err, errNotMember):
			default:
				errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
			}
		}
	}
	for pid, fd := range t.members {
		if seen[pid] {
			continue
		}
		switch err := pidfdSignal(fd, sig); {
		case err == nil:
			n++
		case exited(err):
		default:
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("signal %s %v: %w", name, sig, err)
	}
	return n, nil
}

// Kill implements agent.Enforcer. It never waits on the cgroup: every
// member known gets SIGKILL through its pidfd at once, and the sweep of the
// cgroup (cgroup.kill, or freeze-kill-thaw) runs in the background.
func (e *Enforcer) Kill(name string) error {
	t := e.lookup(name, false)
	if t == nil {
		return fmt.Errorf("kill %s: %w", name, ErrUnknownTree)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	// Members forked before their parent's move or that could not be moved
	// live outside the cgroup, and a pidfd takes no cgroup lock. A member
	// with SIGKILL pending can fork no more.
	for pid, fd := range t.members {
		if err := pidfdSignal(fd, unix.SIGKILL); err != nil && !exited(err) {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	if t.group != "" {
		// The sweep then ends whatever else is in the cgroup (a child
		// forked a moment ago) and any fork still racing in: cgroup.kill,
		// or a freeze so that nothing inside forks while each member is
		// killed through a pidfd checked for membership, then a thaw.
		// Either waits for the kernel's cgroup lock (held for milliseconds
		// while many cgroups are removed at once) and a freeze for tasks
		// to stop: it runs in the background so the caller, and the next
		// tree's kill, do not wait behind it.
		group := t.group
		sigkill := func(pid int) error { return e.signalInGroup(group, pid, unix.SIGKILL) }
		t.sweeping.Add(1)
		e.sweeps.Go(func() {
			defer t.sweeping.Add(-1)
			if !e.h.exists(group) {
				return // released: nothing left in it
			}
			if err := e.h.kill(group, sigkill); err != nil && e.h.exists(group) {
				e.log.Warn("kill through the cgroup", "tree", name, "cgroup", group, "kill", e.KillMethod(), "err", err)
			}
		})
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	e.log.Debug("killed", "tree", name, "cgroup", t.group)
	return nil
}

// WaitKills waits for the cgroup sweeps of earlier Kills to finish.
func (e *Enforcer) WaitKills() { e.sweeps.Wait() }

// Release implements agent.Enforcer.
func (e *Enforcer) Release(name string) error {
	t := e.lookup(name, false)
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sweeping.Load() > 0 {
		// A sweep may hold the cgroup frozen: come back when it is done.
		return busyError{fmt.Errorf("release %s: its cgroup is being swept by a kill", name)}
	}
	var errs []error
	if t.group != "" && e.h.exists(t.group) {
		if err := e.giveBack(t); err != nil {
			errs = append(errs, err)
		}
		if err := e.removeGroup(t.group); err != nil {
			errs = append(errs, err)
		}
	}
	for pid, fd := range t.members {
		unix.Close(fd)
		delete(t.members, pid)
	}
	for _, fd := range []*int{&t.rootFD, &t.mntFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the entry: the cgroup is still there and a later Release
		// (or Adopt in the next run) can finish the job.
		return fmt.Errorf("release %s: %w", name, err)
	}
	e.mu.Lock()
	if e.trees[name] == t {
		delete(e.trees, name)
	}
	e.mu.Unlock()
	return nil
}

// giveBack moves the processes still in the tree's cgroup back to the
// origin, each checked through a pidfd like a signal.
func (e *Enforcer) giveBack(t *tree) error {
	pids, err := e.h.procs(t.group)
	if err != nil || len(pids) == 0 {
		return err
	}
	if !e.h.exists(t.origin) {
		return fmt.Errorf("origin cgroup %s is gone; %d processes stay in %s", t.origin, len(pids), t.group)
	}
	var errs []error
	for _, pid := range pids {
		err := e.moveChecked(t.group, t.origin, pid)
		if err != nil && !exited(err) && !errors.Is(err, errNotMember) {
			errs = append(errs, fmt.Errorf("move pid %d back to %s: %w", pid, t.origin, err))
		}
	}
	return errors.Join(errs...)
}

func (e *Enforcer) moveChecked(from, to string, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if cur, err := cgroupOf(e.procRoot, pid, e.v1); err != nil {
		return unix.ESRCH
	} else if cur != from {
		return errNotMember
	}
	return e.h.add(to, pid)
}

// removeGroup removes a tree cgroup, retrying while its last tasks finish
// exiting (a killed task leaves cgroup.procs a moment after SIGKILL).
func (e *Enforcer) removeGroup(group string) error {
	err := e.h.remove(group)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		return busyError{fmt.Errorf("remove cgroup %s: %w", group, err)}
	}
	return fmt.Errorf("remove cgroup %s: %w", group, err)
}

// Adopt implements agent.Enforcer. It walks the hierarchy read-only and
// stops at each tree cgroup, so nothing else is entered or changed.
func (e *Enforcer) Adopt() (map[string][]int, error) {
	root := e.h.mountpoint()
	found := make(map[string][]int)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() || p == root || !strings.HasPrefix(d.Name(), e.prefix+".") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil
		}
		group := "/" + filepath.ToSlash(rel)
		pids, err := e.h.procs(group)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			e.log.Warn("adopt: cannot list tree cgroup", "cgroup", group, "err", err)
		}
		name := d.Name()
		t := e.lookup(name, true)
		t.mu.Lock()
		switch t.group {
		case "":
			t.group, t.origin = group, path.Dir(group)
			found[name] = append([]int{}, pids...)
		case group:
			found[name] = append([]int{}, pids...)
		default:
			e.log.Warn("adopt: tree name in two cgroups; keeping the first", "tree", name, "kept", t.group, "ignored", group)
		}
		t.mu.Unlock()
		return fs.SkipDir
	})
	if err != nil {
		return found, fmt.Errorf("adopt: walk %s: %w", root, err)
	}
	return found, nil
}
