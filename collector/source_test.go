//go:build linux

package collector

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/internal/hostns"
	"overtime/internal/node"
	"overtime/internal/testtool"
)

func TestMain(m *testing.M) {
	hostns.PrepareTestBinary()
	os.Exit(m.Run())
}

// Real-kernel tests: root needed. Every process started is waited for;
// every file lives in a t.TempDir.

type srcHarness struct {
	src *Source
	ch  chan node.Event
	got []node.Event
}

func newSource(t *testing.T, opts bpf.Options) *srcHarness {
	t.Helper()
	if os.Geteuid() != 0 {
		testtool.Skip(t, "needs root to load BPF programs")
	}
	tr, err := bpf.Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	proc, err := NewProcfs("/proc", false)
	if err != nil {
		t.Fatal(err)
	}
	src := NewSource(tr, proc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The calibration leaves them attached, as while something is tracked
	// (detaching when idle is the agent's part, tested there).
	if !src.FilesEnabled() {
		t.Fatal("file tracepoints detached after NewSource's calibration")
	}
	h := &srcHarness{src: src, ch: make(chan node.Event, 4096)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h.ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
		tr.Close()
	})
	return h
}

func (h *srcHarness) wait(t *testing.T, what string, match func(*node.Event) bool) node.Event {
	t.Helper()
	for _, e := range h.got {
		if match(&e) {
			return e
		}
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e, ok := <-h.ch:
			if !ok {
				t.Fatalf("events closed waiting for %s", what)
			}
			h.got = append(h.got, e)
			if match(&e) {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event within 5s", what)
		}
	}
}

func copyBin(t *testing.T, src, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func run(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return pid
}

func TestSourceExecForkExit(t *testing.T) {
	h := newSource(t, bpf.Options{})
	if m := h.src.CreatedMask(); m != 0x100000 {
		t.Errorf("calibrated mask %#x, want 0x100000 on 6.18", m)
	}
	dir := t.TempDir()
	sh := copyBin(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.src.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, "-c", "sleep 0.2 & wait; exit 3", "argv0-kept")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Wait()
	ex := h.wait(t, "exec", func(e *node.Event) bool { return e.Type == node.EventExec && e.PID == pid })
	p := ex.Proc
	if p == nil || p.PID != pid || p.PPID != os.Getpid() || p.Comm != "ovtest-sh" {
		t.Fatalf("exec proc %+v", p)
	}
	if !slices.Equal(p.Args, []string{sh, "-c", "sleep 0.2 & wait; exit 3", "argv0-kept"}) {
		t.Errorf("args %q", p.Args)
	}
	if p.Exe != sh {
		t.Errorf("exe %q, want %q", p.Exe, sh)
	}
	self, _ := h.src.proc.Cgroup(os.Getpid())
	if p.Cgroup == "" || p.Cgroup != self {
		t.Errorf("cgroup %q, want ours %q", p.Cgroup, self)
	}
	if p.Start < p.Born || ex.Time != p.Start {
		t.Errorf("start %v born %v time %v", p.Start, p.Born, ex.Time)
	}
	fork := h.wait(t, "fork", func(e *node.Event) bool { return e.Type == node.EventFork && e.PPID == pid })
	h.wait(t, "child exit", func(e *node.Event) bool { return e.Type == node.EventExit && e.PID == fork.PID && e.ExitCode == 0 })
	exit := h.wait(t, "exit", func(e *node.Event) bool { return e.Type == node.EventExit && e.PID == pid })
	if exit.ExitCode != 3<<8 {
		t.Errorf("exit code %#x, want 3<<8", exit.ExitCode)
	}
	h.wait(t, "reap", func(e *node.Event) bool { return e.Type == node.EventReap && e.PID == pid })

	// Cgroup from the kernel id when the process is gone.
	if got := h.src.cgroupPath(cgroupIno(t, self)); got != self {
		t.Errorf("cgroup id resolved to %q, want %q", got, self)
	}
}

// A record of a process gone from /proc takes its cgroup from the kernel's
// cgroup id only where the agent's cgroups are v2 ones: with the v1
// freezer, the v2 id names a cgroup of another hierarchy, and the cgroup
// stays unknown.
func TestGoneProcessCgroupFromKernelID(t *testing.T) {
	self, err := (&Procfs{fs: mustProcFS(t)}).Cgroup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	id := cgroupIno(t, self)
	// No process has PID 2^31-1 (pid_max is at most 2^22): gone from /proc.
	rec := &bpf.Record{TGID: 1<<31 - 1, CgroupID: id, Filename: []byte("/gone")}
	for _, v1 := range []bool{false, true} {
		s := &Source{proc: &Procfs{fs: mustProcFS(t), v1: v1}, log: slog.New(slog.DiscardHandler), cgroups: map[uint64]string{}}
		want := self
		if v1 {
			want = ""
		}
		if got := s.process(rec).Cgroup; got != want {
			t.Errorf("v1 %v: cgroup of a gone process = %q, want %q", v1, got, want)
		}
	}
}

func mustProcFS(t *testing.T) procfs.FS {
	t.Helper()
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func cgroupIno(t *testing.T, path string) uint64 {
	for _, mnt := range cgroup2Mounts {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(mnt, "cgroup.controllers"), &st) != nil {
			continue
		}
		if err := syscall.Stat(filepath.Join(mnt, path), &st); err == nil {
			return st.Ino
		}
	}
	t.Fatalf("no cgroup v2 dir for %q", path)
	return 0
}

func TestSourceFiles(t *testing.T) {
	h := newSource(t, bpf.Options{})
	dir := t.TempDir()
	sh := copyBin(t, "/bin/sh", dir, "ovtest-sh")
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.src.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	// Relative paths throughout: resolved against the cwd. mkdir, ln and
	// mv are short-lived children: resolved from their last known cwd.
	script := `cd "$1" && echo a > new && echo b >> new && echo c > new && mkdir sub && ln -s new sym && mv new sub/moved && exec 3<sub && rm sub/moved sym && rmdir sub`
	pid := run(t, exec.Command(sh, "-c", script, "sh", work))
	h.wait(t, "reap", func(e *node.Event) bool { return e.Type == node.EventReap && e.PID == pid })
	h.wait(t, "last unlink", func(e *node.Event) bool {
		return e.Type == node.EventFile && e.File.Op == node.FileUnlink && e.File.Path == filepath.Join(work, "sub")
	})

	var files []node.FileEvent
	for _, e := range h.got {
		if e.Type == node.EventFile {
			files = append(files, *e.File)
		}
	}
	j := func(p string) string { return filepath.Join(work, p) }
	var opens []node.FileEvent
	for _, f := range files {
		if (f.Op == node.FileCreate || f.Op == node.FileOpen) && f.Path == j("new") {
			opens = append(opens, f)
		}
	}
	if len(opens) != 3 || opens[0].Op != node.FileCreate || opens[1].Op != node.FileOpen || opens[2].Op != node.FileOpen {
		t.Errorf("opens of new: %+v, want create, open, open", opens)
	} else {
		var st syscall.Stat_t
		syscall.Stat(work, &st)
		if opens[0].Ino == 0 || opens[0].Dev != st.Dev {
			t.Errorf("create dev %#x ino %d, want dev %#x", opens[0].Dev, opens[0].Ino, st.Dev)
		}
	}
	has := func(op node.FileOp, path, newPath string) *node.FileEvent {
		for i, f := range files {
			if f.Op == op && f.Path == path && f.NewPath == newPath {
				return &files[i]
			}
		}
		t.Errorf("no %v %q %q in %+v", op, path, newPath, files)
		return nil
	}
	if f := has(node.FileMkdir, j("sub"), ""); f != nil && f.Ino == 0 {
		// The directory is removed at the end; it existed when the event
		// was read only if the reader was fast: a zero here is allowed
		// only when it was already gone.
		t.Logf("mkdir: inode unknown (already removed)")
	}
	has(node.FileSymlink, j("sym"), "")
	has(node.FileRename, j("new"), j("sub/moved"))
	has(node.FileUnlink, j("sub/moved"), "")
	has(node.FileUnlink, j("sym"), "")
	has(node.FileUnlink, j("sub"), "")
}

func TestSourceLost(t *testing.T) {
	h := newSource(t, bpf.Options{RingBufferSize: os.Getpagesize()})
	dir := t.TempDir()
	sh := copyBin(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.src.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	// One process making 5000 files with 200-byte names in a tight loop
	// outruns a one-page ring buffer (a record carries the name at its
	// length: about ten fit).
	run(t, exec.Command(sh, "-c", `cd "$1" && p=$(printf %0200d 0) && i=0; while [ $i -lt 5000 ]; do : > $p$i; i=$((i+1)); done`, "sh", dir))
	e := h.wait(t, "lost", func(e *node.Event) bool { return e.Type == node.EventLost })
	if e.Lost == 0 {
		t.Errorf("lost event with Lost 0")
	}
}

func TestSplitArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a\x00", []string{"a"}},
		{"a\x00\x00b\x00", []string{"a", "", "b"}},
		{"a\x00trunc", []string{"a", "trunc"}},
	} {
		if got := splitArgs([]byte(tc.in)); !slices.Equal(got, tc.want) {
			t.Errorf("splitArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestKernelDev(t *testing.T) {
	for _, d := range []struct{ major, minor uint32 }{{8, 3}, {259, 0x12345}, {0, 0}} {
		got := kernelDev(d.major<<20 | d.minor)
		if unix.Major(got) != d.major || unix.Minor(got) != d.minor {
			t.Errorf("kernelDev(%d:%d) = %#x = %d:%d", d.major, d.minor, got, unix.Major(got), unix.Minor(got))
		}
	}
}

// A relative path is joined to the directory the kernel read when the
// syscall returned; without it, to the process's cwd now, which a process
// that is gone no longer has.
func TestFilePathFromKernelDir(t *testing.T) {
	proc, err := NewProcfs("/proc", false)
	if err != nil {
		t.Fatal(err)
	}
	s := &Source{proc: proc, known: map[int]procInfo{}}
	const gone = 1 << 30 // above any pid_max
	r := &bpf.Record{Type: bpf.TypeFile, FileOp: bpf.OpOpen, TGID: gone, Dirfd: unix.AT_FDCWD,
		Flags: unix.O_CREAT | unix.O_EXCL, Path: []byte("../locks/x"), Dir: []byte("/repo/data"), HasDir: true}
	f, err := s.file(r)
	if err != nil || f.Path != "/repo/locks/x" || f.Op != node.FileCreate {
		t.Fatalf("file = %+v, %v; want a create of /repo/locks/x", f, err)
	}
	r.HasDir = false
	if f, err := s.file(r); err == nil {
		t.Fatalf("without the kernel's dir, a gone process's relative path resolved to %q", f.Path)
	}
}
