//go:build linux

package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"overtime/internal/hostns"
	"overtime/internal/procstat"
	"overtime/internal/testtool"
)

// These tests run against the real kernel and need root. Every process
// they start is waited for; every file lives in a t.TempDir.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testtool.Skip(t, "needs root to load BPF programs")
	}
}

func TestMain(m *testing.M) {
	// Helper mode: the test binary, copied under a filtered comm, plays a
	// multi-threaded tracked process.
	if os.Getenv("OVTEST_HELPER") == "threads" {
		threadsHelper()
		return
	}
	hostns.PrepareTestBinary()
	os.Exit(m.Run())
}

// threadsHelper ends four threads one by one (each with the exit syscall,
// not exit_group), then the whole group.
func threadsHelper() {
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A goroutine that returns while locked to its thread ends
			// the thread.
			runtime.LockOSThread()
			time.Sleep(time.Duration(100*(i+1)) * time.Millisecond)
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	os.Exit(0)
}

// harness is a loaded tracer with a reader goroutine copying records out.
type harness struct {
	tr  *Tracer
	ch  chan Record
	got []Record // records seen by wait, in order
}

// newHarness loads the programs with the file programs attached, as while
// something is tracked (TestFilesOnDemand starts without them).
func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	return newHarnessWith(t, opts, func(tr *Tracer) {
		if err := tr.EnableFiles(); err != nil {
			t.Fatal(err)
		}
	})
}

// newHarnessWith runs before (e.g. Calibrate) between Load and the start of
// the reader goroutine.
func newHarnessWith(t *testing.T, opts Options, before func(*Tracer)) *harness {
	t.Helper()
	needRoot(t)
	tr, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if before != nil {
		before(tr)
	}
	h := &harness{tr: tr, ch: make(chan Record, 4096)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rec Record
		for {
			err := tr.Read(&rec)
			if errors.Is(err, ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			h.ch <- cloneRecord(&rec)
		}
	}()
	t.Cleanup(func() {
		tr.Close()
		<-done
	})
	return h
}

func cloneRecord(r *Record) Record {
	c := *r
	c.Comm = bytes.Clone(r.Comm)
	c.Filename = bytes.Clone(r.Filename)
	c.Args = bytes.Clone(r.Args)
	c.Path = bytes.Clone(r.Path)
	c.Path2 = bytes.Clone(r.Path2)
	c.Dir = bytes.Clone(r.Dir)
	c.Dir2 = bytes.Clone(r.Dir2)
	return c
}

// wait returns the first record (seen before or now) matching match.
func (h *harness) wait(t *testing.T, what string, match func(*Record) bool) Record {
	t.Helper()
	for _, r := range h.got {
		if match(&r) {
			return r
		}
	}
	budget := testtool.Scaled(5 * time.Second) // the VM runner's guests are slower
	timeout := time.After(budget)
	for {
		select {
		case r := <-h.ch:
			h.got = append(h.got, r)
			if match(&r) {
				return r
			}
		case <-timeout:
			t.Fatalf("no %s record within %v", what, budget)
		}
	}
}

// drain collects records for d.
func (h *harness) drain(d time.Duration) {
	timeout := time.After(d)
	for {
		select {
		case r := <-h.ch:
			h.got = append(h.got, r)
		case <-timeout:
			return
		}
	}
}

func (h *harness) count(match func(*Record) bool) int {
	n := 0
	for _, r := range h.got {
		if match(&r) {
			n++
		}
	}
	return n
}

// copyBinary copies src into dir under name (the comm the kernel will see).
func copyBinary(t *testing.T, src, dir, name string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(dir, name)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// startWait starts cmd and registers its wait and kill in cleanup.
func start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
}

// statStart reads /proc/PID/stat starttime (clock ticks since boot).
func statStart(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := procstat.ReadStat("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.Start
}

// cgroupInode is the inode of pid's cgroup v2 directory: the cgroup id. On
// a pure v1 node (no cgroup2 mounted: /proc/PID/cgroup has no v2 line)
// every process is in the v2 root, whose id is 1, the inode of the root
// of any cgroup2 mount.
func cgroupInode(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mi), " - cgroup2 ") {
		return 1
	}
	if p, ok := procstat.CgroupPath(b, false); ok {
		for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
			var st syscall.Stat_t
			if syscall.Stat(mnt+"/cgroup.controllers", &st) != nil {
				continue
			}
			if err := syscall.Stat(filepath.Join(mnt, string(p)), &st); err != nil {
				t.Fatal(err)
			}
			return st.Ino
		}
	}
	t.Fatal("no cgroup v2 membership")
	return 0
}

func TestLoadCloseUnblocksRead(t *testing.T) {
	needRoot(t)
	tr, err := Load(Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		var rec Record
		for {
			if err := tr.Read(&rec); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

// TestLoadUnderALowMemlockLimit: Load lifts RLIMIT_MEMLOCK before it
// probes the kernel. Before 5.11 the kernel charges BPF maps to that limit,
// counted over all of root's processes: a probe made first failed with
// EPERM ("ring buffer not supported") when others held most of it. A fresh
// process (the probes' results are cached) starts with a soft limit of 0.
// It tells only on kernels that charge the limit (5.10 in the kernel
// matrix); elsewhere the limit is not consulted.
func TestLoadUnderALowMemlockLimit(t *testing.T) {
	needRoot(t)
	if os.Getenv("OVTEST_MEMLOCK") == "child" {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			t.Fatal(err)
		}
		lim.Cur = 0
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			t.Fatal(err)
		}
		tr, err := Load(Options{})
		if err != nil {
			t.Fatalf("Load with RLIMIT_MEMLOCK 0: %v", err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLoadUnderALowMemlockLimit$", "-test.v")
	cmd.Env = append(os.Environ(), "OVTEST_MEMLOCK=child")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestLoadUnderALowMemlockLimit")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestLoadRejectsBadRingSize(t *testing.T) {
	for _, n := range []int{-1, 1000, 3 * 4096} {
		if _, err := Load(Options{RingBufferSize: n}); err == nil {
			t.Errorf("Load(RingBufferSize %d) succeeded", n)
		}
	}
}

func TestExecFilter(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	sleep := copyBinary(t, "/bin/sleep", dir, "ovtest-sleep")
	other := copyBinary(t, "/bin/sleep", dir, "ovtest-other")
	if err := h.tr.SetFilter([]string{"ovtest-sleep", "ovtest-unused-long-comm-name"}, false, nil); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(sleep, "0.5", "0.1")
	start(t, cmd)
	pid := cmd.Process.Pid
	ticks := statStart(t, pid) // while it is alive
	cgid := cgroupInode(t, pid)
	r := h.wait(t, "exec of ovtest-sleep", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if string(r.Comm) != "ovtest-sleep" {
		t.Errorf("comm %q", r.Comm)
	}
	if int(r.PPID) != os.Getpid() {
		t.Errorf("ppid %d, want %d", r.PPID, os.Getpid())
	}
	if string(r.Filename) != sleep {
		t.Errorf("filename %q, want %q", r.Filename, sleep)
	}
	wantArgs := sleep + "\x000.5\x000.1\x00"
	if string(r.Args) != wantArgs || int(r.ArgsLen) != len(wantArgs) || r.ArgsTruncated {
		t.Errorf("args %q (len %d, truncated %v), want %q", r.Args, r.ArgsLen, r.ArgsTruncated, wantArgs)
	}
	if got := r.Born / uint64(10*time.Millisecond); got != ticks {
		t.Errorf("born %d ns = %d ticks, /proc starttime %d", r.Born, got, ticks)
	}
	if r.Time < r.Born {
		t.Errorf("exec time %d before born %d", r.Time, r.Born)
	}
	if r.CgroupID != cgid {
		t.Errorf("cgroup id %d, want inode %d", r.CgroupID, cgid)
	}
	// A matched exec is a tracking candidate until Untrack; its exit is
	// reported.
	h.wait(t, "exit of the candidate", func(r *Record) bool { return r.Type == TypeExit && r.TGID == uint32(pid) })

	// A comm not in the filter: no record at all.
	cmd = exec.Command(other, "0.1")
	start(t, cmd)
	opid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	h.drain(500 * time.Millisecond)
	if n := h.count(func(r *Record) bool { return r.TGID == uint32(opid) }); n != 0 {
		t.Errorf("%d records for unfiltered comm ovtest-other", n)
	}
	if h.tr.tracked(opid) {
		t.Error("unfiltered process tracked")
	}

	// An empty filter stops the first one too.
	if err := h.tr.SetFilter(nil, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(sleep, "0")
	start(t, cmd)
	spid := cmd.Process.Pid
	cmd.Wait()
	h.drain(300 * time.Millisecond)
	if n := h.count(func(r *Record) bool { return r.TGID == uint32(spid) }); n != 0 {
		t.Errorf("%d records after the filter was emptied", n)
	}
}

func TestArgsTruncated(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	sleep := copyBinary(t, "/bin/sleep", dir, "ovtest-sleep")
	if err := h.tr.SetFilter([]string{"ovtest-sleep"}, false, nil); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 2000) // not a number: sleep fails at once
	cmd := exec.Command(sleep, "0", long)
	start(t, cmd)
	pid := cmd.Process.Pid
	cmd.Wait() // fails: bad argument
	r := h.wait(t, "exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	want := len(sleep) + 1 + 2 + len(long) + 1
	if !r.ArgsTruncated || len(r.Args) != ArgsMax || int(r.ArgsLen) != want {
		t.Errorf("truncated %v, copied %d, len %d (want %d)", r.ArgsTruncated, len(r.Args), r.ArgsLen, want)
	}
	h.tr.Untrack(pid)
}

func TestForkExitReap(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, "-c", "sleep 0.3 & sleep 0.3 & wait")
	start(t, cmd)
	pid := uint32(cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	h.wait(t, "reap of sh", func(r *Record) bool { return r.Type == TypeReap && r.TGID == pid })
	h.drain(200 * time.Millisecond)

	var kids []uint32
	for _, r := range h.got {
		if r.Type == TypeFork && r.PPID == pid {
			kids = append(kids, r.TGID)
			if r.Born == 0 || r.Time < r.Born {
				t.Errorf("fork of %d: born %d time %d", r.TGID, r.Born, r.Time)
			}
		}
	}
	if len(kids) != 2 {
		t.Fatalf("%d fork records from sh %d, want 2: %+v", len(kids), pid, h.got)
	}
	for _, k := range append(kids, pid) {
		is := func(typ Type) func(*Record) bool {
			return func(r *Record) bool { return r.Type == typ && r.TGID == k }
		}
		if n := h.count(is(TypeExit)); n != 1 {
			t.Errorf("pid %d: %d exit records, want 1", k, n)
		}
		if n := h.count(is(TypeReap)); n != 1 {
			t.Errorf("pid %d: %d reap records, want 1", k, n)
		}
		exit := h.wait(t, "exit", is(TypeExit))
		if exit.ExitCode != 0 {
			t.Errorf("pid %d exit code %d", k, exit.ExitCode)
		}
		reap := h.wait(t, "reap", is(TypeReap))
		if reap.Time < exit.Time {
			t.Errorf("pid %d reaped (%d) before exit (%d)", k, reap.Time, exit.Time)
		}
		if h.tr.tracked(int(k)) {
			t.Errorf("pid %d still in tracked after reap", k)
		}
	}
	for _, k := range kids {
		// The children exec'd sleep: a tree member's exec is reported
		// though "sleep" is not in the filter.
		r := h.wait(t, "child exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == k })
		if string(r.Comm) != "sleep" || r.PPID != pid {
			t.Errorf("child exec comm %q ppid %d", r.Comm, r.PPID)
		}
	}
}

func TestExitCodes(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		script string
		kill   bool
		want   int32
	}{
		{script: "exit 3", want: 3 << 8},
		{script: "exit 0", want: 0},
		{script: "kill -TERM $$", want: int32(syscall.SIGTERM)},
		{script: "exec sleep 10", kill: true, want: int32(syscall.SIGKILL)},
	} {
		cmd := exec.Command(sh, "-c", tc.script)
		start(t, cmd)
		pid := uint32(cmd.Process.Pid)
		if tc.kill {
			h.wait(t, "exec of sleep", func(r *Record) bool { return r.Type == TypeExec && r.TGID == pid && string(r.Comm) == "sleep" })
			cmd.Process.Kill()
		}
		cmd.Wait()
		r := h.wait(t, "exit", func(r *Record) bool { return r.Type == TypeExit && r.TGID == pid })
		if r.ExitCode != tc.want {
			t.Errorf("%q: exit code %#x, want %#x", tc.script, r.ExitCode, tc.want)
		}
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if int32(ws) != r.ExitCode {
			t.Errorf("%q: exit code %#x, wait status %#x", tc.script, r.ExitCode, int32(ws))
		}
	}
}

func TestMultithreadedExitOnce(t *testing.T) {
	h := newHarness(t, Options{})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := copyBinary(t, self, t.TempDir(), "ovtest-mt")
	if err := h.tr.SetFilter([]string{"ovtest-mt"}, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "OVTEST_HELPER=threads")
	start(t, cmd)
	pid := cmd.Process.Pid
	execRec := h.wait(t, "exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	// Count threads while it runs: it must really be multi-threaded. A
	// loaded machine may take a while to start them: poll.
	var tasks []os.DirEntry
	for i := 0; i < 200 && len(tasks) < 5; i++ {
		tasks, _ = os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	h.wait(t, "reap", func(r *Record) bool { return r.Type == TypeReap && r.TGID == uint32(pid) })
	if len(tasks) < 5 {
		t.Fatalf("helper had %d threads, want >= 5", len(tasks))
	}
	if n := h.count(func(r *Record) bool { return r.Type == TypeExit && r.TGID == uint32(pid) }); n != 1 {
		t.Errorf("%d exit records for a %d-thread process, want 1", n, len(tasks))
	}
	exit := h.wait(t, "exit", func(r *Record) bool { return r.Type == TypeExit && r.TGID == uint32(pid) })
	// The threads ended over 400ms, the group 200ms after: the exit record
	// must come from the end of the group, not the first thread.
	if d := time.Duration(exit.Time - execRec.Time); d < 400*time.Millisecond {
		t.Errorf("exit %v after exec, before the group ended", d)
	}
}

func TestCalibrateAndFiles(t *testing.T) { forEachFileTracing(t, testCalibrateAndFiles) }

func testCalibrateAndFiles(t *testing.T, mode FileTracing) {
	var mask uint32
	var calErr error
	var filesAfter bool
	h := newHarnessWith(t, Options{FileTracing: mode}, func(tr *Tracer) {
		// Calibrate runs before the consumer, as documented; it attaches
		// the file programs and leaves them attached.
		mask, calErr = tr.Calibrate(t.TempDir())
		filesAfter = tr.FilesEnabled()
	})
	if calErr != nil {
		t.Fatalf("Calibrate: %v", calErr)
	}
	if !filesAfter {
		t.Error("file programs detached after Calibrate")
	}
	if mask != 0x100000 {
		t.Errorf("FMODE_CREATED mask %#x, KERNEL-NOTES measured 0x100000 on 6.18", mask)
	}
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	script := `cd "$1" && echo a > f && echo b >> f && echo c > f && mkdir d && ln -s f l && ln f hard && mv f g && rm g l hard && rmdir d && echo x > ` + filepath.Join(work, "abs")
	cmd := exec.Command(sh, "-c", script, "sh", work)
	start(t, cmd)
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("script: %v", err)
	}
	h.wait(t, "reap", func(r *Record) bool { return r.Type == TypeReap && r.TGID == uint32(pid) })

	var files []Record
	for _, r := range h.got {
		if r.Type == TypeFile {
			files = append(files, r)
		}
	}
	lookup := func(op FileOp, path string) *Record {
		for i := range files {
			if files[i].FileOp == op && string(files[i].Path) == path {
				return &files[i]
			}
		}
		return nil
	}
	find := func(op FileOp, path string, nth int) *Record {
		for i := range files {
			if files[i].FileOp == op && string(files[i].Path) == path {
				if nth == 0 {
					return &files[i]
				}
				nth--
			}
		}
		t.Errorf("no %v #%d of %q in %d file records", op, nth, path, len(files))
		return nil
	}
	const oCreat, oAppend, oTrunc = 0o100, 0o2000, 0o1000
	created := find(OpOpen, "f", 0)
	appended := find(OpOpen, "f", 1)
	truncated := find(OpOpen, "f", 2)
	if created != nil && appended != nil && truncated != nil {
		if created.FMode&mask == 0 || appended.FMode&mask != 0 || truncated.FMode&mask != 0 {
			t.Errorf("f_mode created %#x appended %#x truncated %#x, mask %#x", created.FMode, appended.FMode, truncated.FMode, mask)
		}
		if created.Flags&oCreat == 0 || appended.Flags&oAppend == 0 || truncated.Flags&oTrunc == 0 {
			t.Errorf("open flags %#o %#o %#o", created.Flags, appended.Flags, truncated.Flags)
		}
		if created.Dirfd != -100 {
			t.Errorf("dirfd %d, want AT_FDCWD", created.Dirfd)
		}
		if created.Ino == 0 || created.Ino != appended.Ino || created.Dev == 0 {
			t.Errorf("inodes %d %d dev %#x", created.Ino, appended.Ino, created.Dev)
		}
		// The kernel dev encoding is major<<20|minor; check against stat
		// of the work dir (same filesystem).
		var st syscall.Stat_t
		syscall.Stat(work, &st)
		major, minor := (st.Dev>>8)&0xfff|(st.Dev>>32)&^0xfff, st.Dev&0xff|(st.Dev>>12)&^0xff
		if uint64(created.Dev) != major<<20|minor {
			t.Errorf("dev %#x, stat says %d:%d", created.Dev, major, minor)
		}
	}
	if r := find(OpMkdir, "d", 0); r != nil && r.Dirfd != -100 {
		t.Errorf("mkdir dirfd %d", r.Dirfd)
	}
	if r := find(OpSymlink, "l", 0); r != nil && string(r.Path2) != "f" {
		t.Errorf("symlink target %q", r.Path2)
	}
	if r := find(OpLink, "f", 0); r != nil && string(r.Path2) != "hard" {
		t.Errorf("link new name %q", r.Path2)
	}
	if r := find(OpRename, "f", 0); r != nil && string(r.Path2) != "g" {
		t.Errorf("rename to %q", r.Path2)
	}
	for _, p := range []string{"g", "l", "hard"} {
		find(OpUnlink, p, 0)
	}
	// rmdir(1) calls rmdir(2); unlinkat(AT_REMOVEDIR) would do too.
	if lookup(OpRmdir, "d") == nil && lookup(OpUnlink, "d") == nil {
		t.Errorf("no rmdir of d")
	}
	if r := find(OpOpen, filepath.Join(work, "abs"), 0); r != nil && r.FMode&mask == 0 {
		t.Errorf("absolute create f_mode %#x", r.FMode)
	}
	// Opens without O_CREAT are not reported (sh opened its binary, libc...).
	for _, r := range files {
		if r.FileOp == OpOpen && r.Flags&oCreat == 0 {
			t.Errorf("open without O_CREAT reported: %q %#o", r.Path, r.Flags)
		}
	}
	// Every relative path came with its directory, read by the kernel;
	// a second path only where it is a path (not a symlink's target).
	for _, r := range files {
		rel := !filepath.IsAbs(string(r.Path))
		if r.HasDir != rel || (rel && string(r.Dir) != work) {
			t.Errorf("%v %q: dir %q (read %v), want %q", r.FileOp, r.Path, r.Dir, r.HasDir, work)
		}
		two := (r.FileOp == OpLink || r.FileOp == OpRename) && !filepath.IsAbs(string(r.Path2))
		if r.HasDir2 != two || (two && string(r.Dir2) != work) {
			t.Errorf("%v %q -> %q: dir2 %q (read %v)", r.FileOp, r.Path, r.Path2, r.Dir2, r.HasDir2)
		}
	}
}

// The directory of a relative path is read by the kernel when the syscall
// returns: the cwd (across a mount point, and the root itself) and a
// dirfd's directory, right whatever the process did before the record was
// read.
func TestFileDirs(t *testing.T) { forEachFileTracing(t, testFileDirs) }

func testFileDirs(t *testing.T, mode FileTracing) {
	h := newHarness(t, Options{FileTracing: mode})
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(filepath.Join(mnt), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	sub := filepath.Join(mnt, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	// Relative creates in a directory below a mount point and in /; then
	// the directory is renamed away before anyone reads the records.
	script := `cd "$1" && : > in-mount && cd / && : > /dev/null && mkdir -p "$2" && cd "$2" && : > here && cd / && mv "$2" "$2.moved"`
	other := filepath.Join(dir, "other")
	cmd := exec.Command(sh, "-c", script, "sh", sub, other)
	start(t, cmd)
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("script: %v", err)
	}
	h.wait(t, "reap", func(r *Record) bool { return r.Type == TypeReap && r.TGID == uint32(pid) })
	for path, want := range map[string]string{"in-mount": sub, "here": other} {
		r := h.wait(t, path, func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == path })
		if !r.HasDir || string(r.Dir) != want {
			t.Errorf("%s: dir %q (read %v), want %q", path, r.Dir, r.HasDir, want)
		}
	}

	// A dirfd's directory, from the test process itself.
	self := os.Getpid()
	if err := h.tr.Track(self); err != nil {
		t.Fatal(err)
	}
	defer h.tr.Untrack(self)
	dfd, err := unix.Open(filepath.Join(mnt, "a"), unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, "via-fd", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := unix.Renameat(dfd, "via-fd", unix.AT_FDCWD, filepath.Join(mnt, "moved")); err != nil {
		t.Fatal(err)
	}
	r := h.wait(t, "openat via dirfd", func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == "via-fd" && r.FileOp == OpOpen })
	if !r.HasDir || string(r.Dir) != filepath.Join(mnt, "a") {
		t.Errorf("via-fd: dir %q (read %v), want %q", r.Dir, r.HasDir, filepath.Join(mnt, "a"))
	}
	r = h.wait(t, "renameat", func(r *Record) bool { return r.Type == TypeFile && r.FileOp == OpRename && string(r.Path) == "via-fd" })
	if !r.HasDir || string(r.Dir) != filepath.Join(mnt, "a") || r.HasDir2 {
		t.Errorf("renameat: dir %q (%v), dir2 %q (%v): want the dirfd's and none for an absolute new name", r.Dir, r.HasDir, r.Dir2, r.HasDir2)
	}
}

// TestFileDirLimits checks the bounds of the directory walk at their edges:
// a directory of DirMax - 1 bytes ("/a/b" is 4) or of 31 steps (names and
// mount crossings) is read; one byte or one step more is not, and is left
// to user space.
func TestFileDirLimits(t *testing.T) { forEachFileTracing(t, testFileDirLimits) }

func testFileDirLimits(t *testing.T, mode FileTracing) {
	h := newHarness(t, Options{FileTracing: mode})
	mnt := filepath.Join(t.TempDir(), "m")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	self := os.Getpid()
	if err := h.tr.Track(self); err != nil {
		t.Fatal(err)
	}
	defer h.tr.Untrack(self)

	// steps is what the kernel walks from dir up to /: a name per
	// component, a crossing per mount on the way (from mountinfo).
	mounts := map[string]int{}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 {
			mounts[f[4]]++
		}
	}
	steps := func(dir string) int {
		n := 0
		for p := dir; p != "/"; p = filepath.Dir(p) {
			n += 1 + mounts[p]
		}
		return n
	}
	n := 0
	check := func(dir string, read bool) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		dfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dfd)
		n++
		name := fmt.Sprintf("f%d", n)
		fd, err := unix.Openat(dfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		r := h.wait(t, name, func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == name })
		if r.HasDir != read || (read && string(r.Dir) != dir) {
			t.Errorf("dir of %d bytes, %d steps: %q (read %v), want read %v", len(dir), steps(dir), r.Dir, r.HasDir, read)
		}
	}

	// By length: components of up to 200 bytes, the last one sized.
	long := func(size int) string {
		dir := filepath.Join(mnt, "len")
		for len(dir) < size {
			dir += "/" + strings.Repeat("x", min(200, size-len(dir)-1))
		}
		if len(dir) != size {
			t.Fatalf("cannot make a %d-byte directory below %s", size, mnt)
		}
		return dir
	}
	check(long(DirMax-1), true)
	check(long(DirMax), false)

	// By depth: one-byte names down to 31 steps, then one more.
	dir := filepath.Join(mnt, "deep")
	for steps(dir) < 31 {
		dir = filepath.Join(dir, "d")
	}
	if steps(dir) != 31 {
		t.Fatalf("%s: %d steps", dir, steps(dir))
	}
	check(dir, true)
	check(filepath.Join(dir, "d"), false)
}

func TestLostCounter(t *testing.T) { forEachFileTracing(t, testLostCounter) }

func testLostCounter(t *testing.T, mode FileTracing) {
	needRoot(t)
	// No reader while the burst runs: one page of ring buffer holds about
	// fifty short file records (each takes its real length, 8-aligned,
	// plus an 8-byte header).
	tr, err := Load(Options{RingBufferSize: os.Getpagesize(), FileTracing: mode})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	defer tr.Close()
	if err := tr.EnableFiles(); err != nil {
		t.Fatal(err)
	}
	before, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, "-c", `cd "$1" && i=0; while [ $i -lt 300 ]; do : > f$i; i=$((i+1)); done`, "sh", dir)
	start(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	after, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	// 300 creates of "fN" (80 bytes each), an exec, an exit and a reap in
	// 4096 bytes: at most 51 fit.
	if after-before < 250 {
		t.Errorf("lost %d -> %d: want at least 250 of the burst lost", before, after)
	}
	// What did fit is still readable.
	var rec Record
	if err := tr.Read(&rec); err != nil {
		t.Fatalf("Read after overflow: %v", err)
	}
}

// A held comm is stopped by the kernel at exec, before its first
// instruction, and runs once continued; other comms are never stopped.
func TestExecHold(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	held := copyBinary(t, "/bin/true", dir, "ovtest-held")
	free := copyBinary(t, "/bin/true", dir, "ovtest-free")
	if err := h.tr.SetFilter([]string{"ovtest-free"}, false, []string{"ovtest-held"}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(held)
	start(t, cmd)
	pid := cmd.Process.Pid
	h.wait(t, "exec of ovtest-held", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	// /bin/true would be gone if it ran: it stops instead.
	waitStopped(t, pid)
	// Undecided, it is listed as pending; once tracked, no longer.
	if p, err := h.tr.Pending(); err != nil || !slices.Contains(p, pid) {
		t.Fatalf("Pending() = %v %v, want it to hold %d", p, err, pid)
	}
	if err := h.tr.Track(pid); err != nil {
		t.Fatal(err)
	}
	if p, _ := h.tr.Pending(); slices.Contains(p, pid) {
		t.Fatalf("a tracked pid is still pending")
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("held process after SIGCONT: %v", err)
	}

	cmd = exec.Command(free)
	start(t, cmd)
	if !endsWithin(t, cmd, 5*time.Second) {
		t.Fatal("a comm that is not held was stopped")
	}
}

// endsWithin reports whether a started cmd exits within d, failing the
// test if it exits with an error. One still running then (stopped, say)
// is killed and waited for.
func endsWithin(t *testing.T, cmd *exec.Cmd, d time.Duration) bool {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		return true
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		return false
	}
}

// waitStopped waits until pid is stopped (state T), as a process the
// kernel holds at exec is once the stop is delivered; it fails at once if
// the process ends (it ran) and after 10 s if it never stops.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		switch st := procState(t, pid); st {
		case 'T':
			return
		case 'Z', 'X':
			t.Fatalf("held process %d ran and exited (state %c), want it stopped", pid, st)
		default:
			if time.Now().After(deadline) {
				t.Fatalf("held process %d in state %c after 10s, want T (stopped)", pid, st)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func procState(t *testing.T, pid int) byte {
	t.Helper()
	st, err := procstat.ReadStat("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}

// A kernel without BTF is refused at start with an error that names it,
// never loaded half-way.
func TestLoadWithoutBTF(t *testing.T) {
	old := btfPath
	btfPath = filepath.Join(t.TempDir(), "vmlinux")
	defer func() { btfPath = old }()
	tr, err := Load(Options{})
	if err == nil {
		tr.Close()
		t.Fatal("Load succeeded without BTF")
	}
	if !strings.Contains(err.Error(), "kernel BTF missing") || !strings.Contains(err.Error(), btfPath) {
		t.Fatalf("error does not say what is missing: %v", err)
	}
}

// With the file programs detached, a candidate is stopped at exec (Held)
// and none of its file changes happen before EnableFiles: the file its
// first command creates is reported. Detaching is refused while the kernel
// tracks a process, and afterwards a tracked process's files go unreported
// and candidates are held again.
func TestFilesOnDemand(t *testing.T) {
	h := newHarnessWith(t, Options{FileTracing: FileTracingTracepoint}, nil)
	if h.tr.FilesEnabled() {
		t.Fatal("file programs attached at Load")
	}
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(dir, "first")
	cmd := exec.Command(sh, "-c", `echo x > "$1"`, "sh", first)
	start(t, cmd)
	pid := cmd.Process.Pid
	ex := h.wait(t, "held exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	if !ex.Held {
		t.Fatal("exec record of a candidate with file programs off: Held not set")
	}
	waitStopped(t, pid)
	if _, err := os.Lstat(first); err == nil {
		t.Fatal("the held process ran")
	}
	// Undecided, it keeps the programs from being detached.
	if err := h.tr.EnableFiles(); err != nil {
		t.Fatal(err)
	}
	if off, err := h.tr.DisableFiles(); off || err != nil || !h.tr.FilesEnabled() {
		t.Fatalf("DisableFiles with a candidate tracked = %v, %v; attached %v", off, err, h.tr.FilesEnabled())
	}
	if err := h.tr.Track(pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	h.wait(t, "the held process's first file", func(r *Record) bool {
		return r.Type == TypeFile && r.TGID == uint32(pid) && r.FileOp == OpOpen && string(r.Path) == first
	})
	h.wait(t, "reap", func(r *Record) bool { return r.Type == TypeReap && r.TGID == uint32(pid) })

	// With programs attached, a candidate is not held.
	cmd = exec.Command(sh, "-c", "exit 0")
	start(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	ex = h.wait(t, "exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(cmd.Process.Pid) })
	if ex.Held {
		t.Fatal("a candidate held with the file programs attached")
	}
	if err := h.tr.Untrack(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}

	// Nothing tracked: detached.
	if off, err := h.tr.DisableFiles(); !off || err != nil || h.tr.FilesEnabled() {
		t.Fatalf("DisableFiles with nothing tracked = %v, %v; attached %v", off, err, h.tr.FilesEnabled())
	}
	cmd = exec.Command(sh, "-c", "exit 0")
	start(t, cmd)
	ex = h.wait(t, "exec held again", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(cmd.Process.Pid) })
	if !ex.Held {
		t.Fatal("a candidate not held after DisableFiles")
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	h.tr.Untrack(cmd.Process.Pid)
	h.tr.detaching.Wait() // the links close in the background
	self := os.Getpid()
	if err := h.tr.Track(self); err != nil {
		t.Fatal(err)
	}
	defer h.tr.Untrack(self)
	unseen := filepath.Join(dir, "unseen")
	if err := os.WriteFile(unseen, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.drain(300 * time.Millisecond)
	if n := h.count(func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == unseen }); n != 0 {
		t.Fatalf("%d file records with the file programs detached", n)
	}
}

// BenchmarkFilesAttach measures what the first tracked process waits at
// exec when nothing was tracked (EnableFiles), and the detach after idle.
func BenchmarkFilesAttach(b *testing.B) {
	if os.Geteuid() != 0 {
		testtool.Skip(b, "needs root to load BPF programs")
	}
	tr, err := Load(Options{FileTracing: FileTracingTracepoint})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	var attach, disable, detached time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := tr.EnableFiles(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if off, err := tr.DisableFiles(); !off || err != nil {
			b.Fatalf("DisableFiles = %v, %v", off, err)
		}
		t2 := time.Now()
		tr.detaching.Wait()
		attach += t1.Sub(t0)
		disable += t2.Sub(t1)
		detached += time.Since(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(attach.Microseconds())/n, "µs-attach/op")
	b.ReportMetric(float64(disable.Microseconds())/n, "µs-disable-call/op")
	b.ReportMetric(float64(detached.Microseconds())/n, "µs-detached/op")
}

// Attaching again while the last detach is still closing its links uses the
// second set of programs: at once, and every file change is reported
// exactly once while both sets' programs run.
func TestFilesReattachWhileDetaching(t *testing.T) {
	h := newHarness(t, Options{FileTracing: FileTracingTracepoint})
	dir := t.TempDir()
	for round := range 3 {
		if off, err := h.tr.DisableFiles(); !off || err != nil {
			t.Fatalf("round %d: DisableFiles = %v, %v", round, off, err)
		}
		began := time.Now()
		if err := h.tr.EnableFiles(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t.Logf("round %d: attached again in %v", round, time.Since(began))
		self := os.Getpid()
		if err := h.tr.Track(self); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fmt.Sprintf("f%d", round))
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := h.tr.Untrack(self); err != nil {
			t.Fatal(err)
		}
		h.wait(t, "the file's record", func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == path })
		h.drain(200 * time.Millisecond)
		if n := h.count(func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == path }); n != 1 {
			t.Fatalf("round %d: %d records of one create", round, n)
		}
	}
}

// An attach does not wait for a detach in flight: the detach closes its
// links one at a time and lets EnableFiles in between (each close holds
// the kernel's trace event lock for RCU grace periods; all of a set's
// take about a second). So most of the first set's links are still open
// when the attach of the second returns, and a file created then is
// reported once; the detach then finishes, and the second set goes on
// reporting.
func TestAttachPassesADetach(t *testing.T) {
	h := newHarness(t, Options{FileTracing: FileTracingTracepoint})
	dir := t.TempDir()
	first := h.tr.sets[0]
	if h.tr.on != first {
		t.Fatal("the first set is not the one attached")
	}
	links := first.open.Load()
	// The detach pauses after its first close while the attach comes:
	// on some kernels (5.10) the whole set closes in a few milliseconds.
	closed, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.tr.afterClose = func() { once.Do(func() { close(closed); <-resume }) }
	defer func() {
		select {
		case <-resume:
		default:
			close(resume)
		}
	}()
	if off, err := h.tr.DisableFiles(); !off || err != nil {
		t.Fatalf("DisableFiles = %v, %v", off, err)
	}
	<-closed
	began := time.Now()
	attached := make(chan error, 1)
	go func() { attached <- h.tr.EnableFiles() }()
	select {
	case err := <-attached:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(resume)
		t.Fatal("the attach waits for the paused detach")
	}
	took := time.Since(began)
	left := first.open.Load()
	h.tr.fmu.Lock()
	on := h.tr.on
	h.tr.fmu.Unlock()
	if on != h.tr.sets[1] {
		t.Fatal("attached again while the first set was detaching, but not with the second set")
	}
	t.Logf("the detach had closed %d of %d links when the attach returned, %v after it began", links-left, links, took)
	if left != links-1 {
		t.Fatalf("the detach had closed %d of %d links when the attach returned, want the one before its pause", links-left, links)
	}
	close(resume)
	self := os.Getpid()
	if err := h.tr.Track(self); err != nil {
		t.Fatal(err)
	}
	defer h.tr.Untrack(self)
	create := func(name string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		h.wait(t, name+"'s record", func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == path })
		h.drain(200 * time.Millisecond)
		if n := h.count(func(r *Record) bool { return r.Type == TypeFile && string(r.Path) == path }); n != 1 {
			t.Fatalf("%d records of one create of %s", n, name)
		}
	}
	create("during")
	h.tr.detaching.Wait()
	if n := first.open.Load(); n != 0 {
		t.Fatalf("%d links of the first set left open after its detach", n)
	}
	h.tr.fmu.Lock()
	err := h.tr.detachErr
	h.tr.fmu.Unlock()
	if err != nil {
		t.Fatalf("detach: %v", err)
	}
	create("after")
}

// Track of a candidate that was reaped before user space got to it adds
// nothing: the kernel already dropped its entry, and a new one would stay
// forever (keeping the file programs attached and a later process with the
// PID tracked).
func TestTrackOfAReapedCandidateAddsNothing(t *testing.T) {
	h := newHarness(t, Options{})
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, "-c", "exit 0")
	start(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	h.wait(t, "reap", func(r *Record) bool { return r.Type == TypeReap && r.TGID == uint32(pid) })
	if err := h.tr.Track(pid); err != nil {
		t.Fatal(err)
	}
	if h.tr.tracked(pid) {
		t.Fatal("Track of a reaped process left an entry")
	}
	// A live process found by a scan (no entry yet) is added.
	self := os.Getpid()
	if err := h.tr.Track(self); err != nil {
		t.Fatal(err)
	}
	defer h.tr.Untrack(self)
	if !h.tr.tracked(self) {
		t.Fatal("Track of a live process without an entry added none")
	}
}

// A candidate with a controlling terminal is not held while the file
// programs are detached: an interactive shell would take the stop for ^Z.
// One without a terminal is (TestFilesOnDemand).
func TestNoHoldWithAControllingTerminal(t *testing.T) {
	h := newHarnessWith(t, Options{FileTracing: FileTracingTracepoint}, nil)
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		testtool.Skip(t, "no pseudo-terminals here: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	go io.Copy(io.Discard, ptmx)
	cmd := exec.Command(sh, "-c", "exit 0")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	start(t, cmd)
	if !endsWithin(t, cmd, 5*time.Second) {
		t.Fatal("a candidate with a controlling terminal was held")
	}
	ex := h.wait(t, "exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(cmd.Process.Pid) })
	if ex.Held {
		t.Fatal("exec record says held")
	}
}

// The hold record's files for the guard keep naming the same maps after
// the garbage collector has run: each holds a descriptor of its own.
func TestHoldsFilesOutliveTheCollector(t *testing.T) {
	h := newHarness(t, Options{})
	holds := h.tr.Holds()
	files, err := holds.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for range 3 {
		runtime.GC()
	}
	want := []*ebpf.Map{holds.held, holds.expired, holds.busy}
	for i, f := range files {
		dup, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
		m, err := ebpf.NewMapFromFD(dup)
		if err != nil {
			t.Fatalf("file %d no longer names a map: %v", i, err)
		}
		got, err1 := m.Info()
		exp, err2 := want[i].Info()
		m.Close()
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		gotID, _ := got.ID()
		expID, _ := exp.ID()
		if gotID != expID {
			t.Fatalf("file %d names map %d, want %d", i, gotID, expID)
		}
	}
}
