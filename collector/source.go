//go:build linux

package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/internal/node"
)

// lostCheckEvery bounds how often Lost is read while records flow (a map
// lookup is a syscall); readTimeout is the longest Run blocks in Read, so
// lost records are also noticed when nothing else arrives.
const (
	lostCheckEvery = 250 * time.Millisecond
	readTimeout    = time.Second
)

// cgroup2Mounts are where the cgroup v2 hierarchy is looked for: pure v2
// nodes, then the hybrid layout.
var cgroup2Mounts = []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}

// Source turns the kernel's records into Events. It is the eBPF half of the
// collector; Scan and OpenFiles (procfs) live beside it.
type Source struct {
	t    tracer
	proc *Procfs
	log  *slog.Logger

	// createdMask is the calibrated FMODE_CREATED bit; 0 when calibration
	// failed and only O_EXCL proves that an open created its file.
	createdMask uint32

	cgMu    sync.Mutex
	cgroups map[uint64]string // cgroup v2 id (inode) -> path

	// known remembers, for each process seen at exec or fork, its parent
	// and its cwd then, so that a relative path of a process that is
	// already gone when its record is read (mkdir, ln, mv run for a
	// millisecond) still resolves. Only Run's goroutine uses it.
	known map[int]procInfo

	pw *parentWatch
}

type procInfo struct {
	ppid int
	cwd  string
}

// maxAncestors bounds the walk up known parents; maxKnown the entries kept.
const (
	maxAncestors = 16
	maxKnown     = 1 << 16
)

// NewSource wraps a loaded tracer. It calibrates creation provenance at
// once (Tracer.Calibrate, in a temporary directory), so it must be called
// before anything reads from t: Run is then the only reader. Calibration
// failure is not fatal: it is logged at warn and only O_EXCL opens count as
// creations.
func NewSource(t *bpf.Tracer, proc *Procfs, log *slog.Logger) *Source {
	return newTracerSource(bpfTracer{t}, proc, log)
}

func newTracerSource(t tracer, proc *Procfs, log *slog.Logger) *Source {
	s := &Source{t: t, proc: proc, log: log, cgroups: map[uint64]string{}, known: map[int]procInfo{}}
	s.pw = newParentWatch(func() { _ = t.Wake() })
	dir, err := os.MkdirTemp("", "overtime-calibrate-")
	if err == nil {
		s.createdMask, err = t.Calibrate(dir)
		os.Remove(dir)
	}
	if err != nil {
		log.Warn("creation provenance limited to O_EXCL", "err", err)
	} else {
		log.Info("calibrated FMODE_CREATED", "mask", fmt.Sprintf("%#x", s.createdMask))
	}
	return s
}

// CreatedMask is the calibrated f_mode bit that marks an open that created
// its file; 0 means only O_EXCL opens are taken as creations.
func (s *Source) CreatedMask() uint32 { return s.createdMask }

// SetFilter tells the kernel which exec comms may match a rule; all lets
// every exec through; hold comms are stopped at exec until resumed.
func (s *Source) SetFilter(comms []string, all bool, hold []string) error {
	return s.t.SetFilter(comms, all, hold)
}

// EnableFiles attaches the file syscall tracepoints; until then, new
// candidates are held at exec (Process.Held).
func (s *Source) EnableFiles() error { return s.t.EnableFiles() }

// DisableFiles detaches them unless the kernel tracks a process (then it
// returns false and they stay).
func (s *Source) DisableFiles() (bool, error) { return s.t.DisableFiles() }

// FilesEnabled reports whether the file syscall tracepoints are attached.
func (s *Source) FilesEnabled() bool { return s.t.FilesEnabled() }

// Track marks pid as tracked: its forks, exits and file changes are
// reported from now on.
func (s *Source) Track(pid int) error { return s.t.Track(pid) }

// Untrack forgets pid (and the watch of its parent).
func (s *Source) Untrack(pid int) error {
	s.pw.unwatch(pid)
	return s.t.Untrack(pid)
}

// Pending lists the exec candidates the kernel tracks that were neither
// tracked nor untracked: after lost events, those whose exec was dropped.
func (s *Source) Pending() ([]int, error) { return s.t.Pending() }

// Scan lists the processes running now, from procfs.
func (s *Source) Scan() ([]node.Process, error) { return s.proc.Scan() }

// HoldDone tells the kernel's hold record that pid, stopped at exec, was
// resumed or ended.
func (s *Source) HoldDone(pid int) error { return s.t.HoldDone(pid) }

// HoldsExpired counts the held processes the guard resumed at the hold
// bound because nobody decided on them in time.
func (s *Source) HoldsExpired() uint64 {
	n, err := s.t.HoldsExpired()
	if err != nil {
		s.log.Debug("read expired holds", "err", err)
	}
	return n
}

// ScanSkipped counts the processes scans left out for a read error.
func (s *Source) ScanSkipped() uint64 { return s.proc.Skipped() }

// Reaped reports whether process pid, started at born, is gone (not even
// a zombie), from procfs.
func (s *Source) Reaped(pid int, born time.Duration) bool { return s.proc.Reaped(pid, born) }

// OpenFiles lists pid's open files, from procfs.
func (s *Source) OpenFiles(pid int) ([]string, error) { return s.proc.OpenFiles(pid) }

// Run delivers events until ctx is done, then closes events and returns
// nil. It returns an error (and closes events) if the tracer is closed
// under it or fails.
func (s *Source) Run(ctx context.Context, events chan<- node.Event) error {
	defer close(events)
	defer s.pw.close()
	stop := context.AfterFunc(ctx, func() { s.t.Wake() })
	defer stop()

	var rec bpf.Record
	var lastLost uint64
	if n, err := s.t.Lost(); err == nil {
		lastLost = n
	}
	lastCheck := time.Now()
	checkLost := func() bool {
		lastCheck = time.Now()
		n, err := s.t.Lost()
		if err != nil {
			s.log.Warn("read lost counter", "err", err)
			return true
		}
		if n <= lastLost {
			return true
		}
		delta := n - lastLost
		lastLost = n
		return send(ctx, events, node.Event{Type: node.EventLost, Lost: delta})
	}

	for {
		s.t.SetDeadline(time.Now().Add(readTimeout))
		if ctx.Err() != nil {
			return nil
		}
		if !s.flushOrphans(ctx, events) {
			return nil
		}
		err := s.t.Read(&rec)
		switch {
		case err == nil:
			if ev, ok := s.convert(&rec); ok && !send(ctx, events, ev) {
				return nil
			}
			if time.Since(lastCheck) < lostCheckEvery {
				continue
			}
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, bpf.ErrFlushed):
		case errors.Is(err, bpf.ErrMalformed):
			s.log.Warn("malformed kernel record", "err", err)
			continue
		default:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read events: %w", err)
		}
		if !checkLost() {
			return nil
		}
	}
}

// flushOrphans hands on the parent exits the watches reported.
func (s *Source) flushOrphans(ctx context.Context, events chan<- node.Event) bool {
	for {
		select {
		case ev := <-s.pw.pending:
			if !send(ctx, events, ev) {
				return false
			}
		default:
			return true
		}
	}
}

func send(ctx context.Context, events chan<- node.Event, ev node.Event) bool {
	select {
	case events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// convert makes an Event of a record; false drops it (logged).
func (s *Source) convert(r *bpf.Record) (node.Event, bool) {
	ev := node.Event{
		Time: time.Duration(r.Time),
		PID:  int(r.TGID),
		Born: time.Duration(r.Born),
		PPID: int(r.PPID),
	}
	switch r.Type {
	case bpf.TypeExec:
		ev.Type = node.EventExec
		ev.Proc = s.process(r)
		s.remember(ev.PID, ev.PPID)
	case bpf.TypeFork:
		ev.Type = node.EventFork
		s.remember(ev.PID, ev.PPID)
	case bpf.TypeExit:
		ev.Type = node.EventExit
		ev.PPID = 0
		ev.ExitCode = int(r.ExitCode)
	case bpf.TypeReap:
		ev.Type = node.EventReap
		ev.PPID = 0
		delete(s.known, ev.PID)
		s.pw.unwatch(ev.PID)
	case bpf.TypeFile:
		ev.Type = node.EventFile
		ev.PPID = 0
		f, err := s.file(r)
		if err != nil {
			s.log.Debug("file event dropped", "pid", r.TGID, "op", r.FileOp.String(), "path", string(r.Path), "err", err)
			return ev, false
		}
		ev.File = f
	default:
		return ev, false
	}
	return ev, true
}

func (s *Source) process(r *bpf.Record) *node.Process {
	pid := int(r.TGID)
	p := &node.Process{
		PID:   pid,
		PPID:  int(r.PPID),
		Comm:  string(r.Comm),
		Args:  splitArgs(r.Args),
		Start: time.Duration(r.Time),
		Born:  time.Duration(r.Born),
		Held:  r.Held,
	}
	exe, err := s.proc.Exe(pid)
	if err != nil || exe == "" {
		// Gone already: the path execve was given is the best left.
		exe = string(r.Filename)
	}
	p.Exe = exe
	cg, err := s.proc.Cgroup(pid)
	if err != nil {
		cg = s.kernelCgroup(r.CgroupID)
	}
	p.Cgroup = cg
	return p
}

// kernelCgroup is the cgroup of a process already gone from /proc, from
// the record's cgroup id: bpf_get_current_cgroup_id is the id in the cgroup
// v2 hierarchy. When the agent reads cgroups from the v1 freezer hierarchy
// (a pure v1 node, where that id is the v2 root's for every task, or a
// hybrid one whose trees live in the freezer), a v2 path would name a
// cgroup of another hierarchy: the cgroup stays unknown ("") rather than
// misattributed.
func (s *Source) kernelCgroup(id uint64) string {
	if s.proc.v1 {
		return ""
	}
	return s.cgroupPath(id)
}

// splitArgs splits NUL-separated argv; a final unterminated (truncated)
// argument is kept.
func splitArgs(b []byte) []string {
	var args []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			args = append(args, string(b))
			break
		}
		args = append(args, string(b[:i]))
		b = b[i+1:]
	}
	return args
}

// cgroupPath finds the cgroup v2 directory whose inode is id (the kernel's
// cgroup id), as a path from the hierarchy root. Found paths are cached; a
// miss walks the hierarchy again. "" when not found.
func (s *Source) cgroupPath(id uint64) string {
	if id == 0 {
		return ""
	}
	s.cgMu.Lock()
	defer s.cgMu.Unlock()
	if p, ok := s.cgroups[id]; ok {
		return p
	}
	for _, mnt := range cgroup2Mounts {
		var st unix.Statfs_t
		if unix.Statfs(mnt, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		filepath.WalkDir(mnt, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if sys, ok := info.Sys().(*syscall.Stat_t); ok {
				rel, _ := filepath.Rel(mnt, path)
				s.cgroups[sys.Ino] = filepath.Clean("/" + rel)
			}
			return nil
		})
		break
	}
	return s.cgroups[id]
}

// O_* bits the decision needs (asm-generic values, as on x86-64 and arm64).
const oExcl = unix.O_EXCL

func (s *Source) file(r *bpf.Record) (*node.FileEvent, error) {
	if r.PathTruncated || r.Path2Truncated {
		return nil, errors.New("path truncated by the kernel bound")
	}
	pid := int(r.TGID)
	f := &node.FileEvent{}
	var err error
	switch r.FileOp {
	case bpf.OpOpen:
		if f.Path, err = s.absPath(pid, r.Dirfd, r.Path, r.Dir, r.HasDir); err != nil {
			return nil, err
		}
		f.Op = node.FileOpen
		if r.Flags&oExcl != 0 || (s.createdMask != 0 && r.FMode&s.createdMask != 0) {
			f.Op = node.FileCreate
		}
		if r.Ino != 0 {
			f.Dev = kernelDev(r.Dev)
			f.Ino = r.Ino
		}
		return f, nil
	case bpf.OpMkdir:
		f.Op = node.FileMkdir
		f.Path, err = s.absPath(pid, r.Dirfd, r.Path, r.Dir, r.HasDir)
	case bpf.OpSymlink:
		f.Op = node.FileSymlink
		f.Path, err = s.absPath(pid, r.Dirfd, r.Path, r.Dir, r.HasDir)
	case bpf.OpLink:
		// The new name is what the process created.
		f.Op = node.FileLink
		f.Path, err = s.absPath(pid, r.Dirfd2, r.Path2, r.Dir2, r.HasDir2)
	case bpf.OpRename:
		f.Op = node.FileRename
		if f.Path, err = s.absPath(pid, r.Dirfd, r.Path, r.Dir, r.HasDir); err == nil {
			f.NewPath, err = s.absPath(pid, r.Dirfd2, r.Path2, r.Dir2, r.HasDir2)
		}
		if err == nil {
			f.Dev, f.Ino = s.lstat(pid, f.NewPath)
		}
		return f, err
	case bpf.OpUnlink, bpf.OpRmdir:
		f.Op = node.FileUnlink
		f.Path, err = s.absPath(pid, r.Dirfd, r.Path, r.Dir, r.HasDir)
		return f, err
	default:
		return nil, fmt.Errorf("unknown file op %d", r.FileOp)
	}
	if err != nil {
		return nil, err
	}
	// The kernel read no inode for these: look at what is there now, in
	// the process's own root.
	f.Dev, f.Ino = s.lstat(pid, f.Path)
	return f, nil
}

// kernelDev converts the kernel's dev_t (major<<20 | minor) to the user
// space encoding of st_dev.
func kernelDev(d uint32) uint64 {
	return unix.Mkdev(d>>20, d&0xfffff)
}

// remember notes pid's parent and current cwd (its parent's when pid is
// already gone, or a zombie: a child starts in its parent's cwd). The
// parent's cwd is read now rather than taken from when the parent itself
// was remembered: a shell that ran `cd` since would otherwise send every
// short-lived child (mkdir, ln, mv) to its old directory.
func (s *Source) remember(pid, ppid int) {
	cwd, err := os.Readlink(filepath.Join(s.proc.Root(), strconv.Itoa(pid), "cwd"))
	if err != nil || !filepath.IsAbs(cwd) {
		cwd, err = os.Readlink(filepath.Join(s.proc.Root(), strconv.Itoa(ppid), "cwd"))
		if err != nil || !filepath.IsAbs(cwd) {
			cwd = s.known[ppid].cwd
		}
	}
	if len(s.known) >= maxKnown {
		// Untracked processes are never reaped here (pass-all execs):
		// bound the memory rather than track their lifetimes.
		clear(s.known)
	}
	s.known[pid] = procInfo{ppid: ppid, cwd: cwd}
}

// absPath makes path absolute as process pid sees it: relative to dir, the
// directory the kernel read when the syscall returned (hasDir), else to
// the process's cwd (AT_FDCWD) or the directory open as dirfd now; then
// cleaned.
func (s *Source) absPath(pid int, dirfd int32, path, dir []byte, hasDir bool) (string, error) {
	p := string(path)
	if p == "" {
		return "", errors.New("empty path")
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p), nil
	}
	if hasDir {
		return filepath.Join(string(dir), p), nil
	}
	link := filepath.Join(s.proc.Root(), strconv.Itoa(pid), "cwd")
	if dirfd != unix.AT_FDCWD {
		link = filepath.Join(s.proc.Root(), strconv.Itoa(pid), "fd", strconv.Itoa(int(dirfd)))
	}
	base, err := os.Readlink(link)
	if err != nil && dirfd == unix.AT_FDCWD && s.known[pid].cwd != "" {
		// Gone already: its cwd as last seen.
		base, err = s.known[pid].cwd, nil
	}
	if err != nil {
		return "", fmt.Errorf("resolve relative path: %w", err)
	}
	if !filepath.IsAbs(base) {
		return "", fmt.Errorf("resolve relative path: %s is %q", link, base)
	}
	return filepath.Join(base, p), nil
}

// lstat reads dev and inode of path in pid's root, or when pid is gone in
// the root of its nearest live known ancestor; zeros when unknown.
func (s *Source) lstat(pid int, path string) (dev, ino uint64) {
	for range maxAncestors {
		var st unix.Stat_t
		root := filepath.Join(s.proc.Root(), strconv.Itoa(pid), "root")
		err := unix.Lstat(root+path, &st)
		if err == nil {
			return st.Dev, st.Ino
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			return 0, 0
		}
		// ENOENT may be the path or the process: only climb when the
		// process has no root any more — gone, or a zombie (exited, not
		// yet reaped: /proc/PID is still there but its root is not).
		if _, err := os.Readlink(root); err == nil {
			return 0, 0
		}
		info, ok := s.known[pid]
		if !ok || info.ppid <= 0 {
			return 0, 0
		}
		pid = info.ppid
	}
	return 0, 0
}
