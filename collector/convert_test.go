//go:build linux

package collector

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/internal/node"
)

// The conversion of kernel records to events, without a kernel: a fake
// tracer hands the Source records a test wrote, and procfs is a fixture
// tree. The real-kernel counterparts are in source_test.go.

// fakeTracer feeds records (or read errors) to Source.Run. The steering
// calls the conversion does not make are left to the embedded interface
// (nil: a call panics).
type fakeTracer struct {
	tracer
	mask  uint32 // what Calibrate finds
	reads chan fakeRead
	wake  chan struct{}

	mu       sync.Mutex
	lost     uint64
	lostErr  error
	deadline time.Time
}

// fakeRead is what one Read returns: rec, or err when set.
type fakeRead struct {
	rec bpf.Record
	err error
}

func newFakeTracer(mask uint32) *fakeTracer {
	return &fakeTracer{mask: mask, reads: make(chan fakeRead), wake: make(chan struct{}, 1)}
}

func (f *fakeTracer) Calibrate(string) (uint32, error) { return f.mask, nil }

func (f *fakeTracer) SetDeadline(d time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deadline = d
}

func (f *fakeTracer) Wake() error {
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeTracer) Lost() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lost, f.lostErr
}

func (f *fakeTracer) setLost(n uint64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lost, f.lostErr = n, err
}

// Read blocks like the ring buffer's: until a record is fed, Wake, or the
// deadline.
func (f *fakeTracer) Read(rec *bpf.Record) error {
	f.mu.Lock()
	d := time.Until(f.deadline)
	f.mu.Unlock()
	select {
	case r := <-f.reads:
		if r.err != nil {
			return r.err
		}
		*rec = r.rec
		return nil
	case <-f.wake:
		return bpf.ErrFlushed
	case <-time.After(d):
		return os.ErrDeadlineExceeded
	}
}

// fakeRun is a Source running on a fake tracer.
type fakeRun struct {
	tr     *fakeTracer
	src    *Source
	events chan node.Event
	done   chan error
}

// runFake starts Run on a fake tracer over proc; it is stopped, and its
// channel checked closed, at the end of the test.
func runFake(t *testing.T, proc *Procfs, mask uint32) *fakeRun {
	t.Helper()
	tr := newFakeTracer(mask)
	r := &fakeRun{tr: tr, events: make(chan node.Event, 64), done: make(chan error, 1)}
	r.src = newTracerSource(tr, proc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if r.src.CreatedMask() != mask {
		t.Fatalf("CreatedMask = %#x, want the calibrated %#x", r.src.CreatedMask(), mask)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- r.src.Run(ctx, r.events) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after its context was cancelled")
		}
		for ev := range r.events {
			t.Errorf("event left unread: %+v", ev)
		}
	})
	return r
}

// feed hands Run one record.
func (r *fakeRun) feed(t *testing.T, rec bpf.Record) {
	t.Helper()
	r.read(t, fakeRead{rec: rec})
}

// fail makes Run's next Read return err.
func (r *fakeRun) fail(t *testing.T, err error) {
	t.Helper()
	r.read(t, fakeRead{err: err})
}

func (r *fakeRun) read(t *testing.T, fr fakeRead) {
	t.Helper()
	select {
	case r.tr.reads <- fr:
	case err := <-r.done:
		t.Fatalf("Run returned %v before reading", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run does not read")
	}
}

// next is the next event Run sends.
func (r *fakeRun) next(t *testing.T) node.Event {
	t.Helper()
	select {
	case ev, ok := <-r.events:
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return node.Event{}
}

// want checks that rec converts to want.
func (r *fakeRun) want(t *testing.T, rec bpf.Record, want node.Event) {
	t.Helper()
	r.feed(t, rec)
	if got := r.next(t); !reflect.DeepEqual(got, want) {
		t.Errorf("record %+v\n  = %+v (proc %+v, file %+v)\nwant %+v (proc %+v, file %+v)",
			rec, got, got.Proc, got.File, want, want.Proc, want.File)
	}
}

// dropped checks that rec gives no event: the record after it (an exit
// of pid 1) is the next event.
func (r *fakeRun) dropped(t *testing.T, rec bpf.Record) {
	t.Helper()
	r.feed(t, rec)
	r.want(t, bpf.Record{Type: bpf.TypeExit, TGID: 1, Time: 1}, node.Event{Type: node.EventExit, PID: 1, Time: 1})
}

// restic is a fixture process that execs, forks and makes files. Its
// root and cwd are links in the fixture, as a process's are in /proc.
const resticPID = 4242

func resticFixture(t *testing.T, v1 bool) (proc *Procfs, root string) {
	t.Helper()
	dir := t.TempDir()
	writeFakeProc(t, dir, fakeProc{pid: resticPID, comm: "restic", state: 'S', ppid: 4200, flags: userFlags, start: 400,
		cmdline: "restic\x00backup\x00", exe: "/usr/local/bin/restic (deleted)", cgroup: fixtureHybridCgroup})
	root = t.TempDir()
	pd := filepath.Join(dir, "4242")
	for link, target := range map[string]string{"root": root, "cwd": "/srv/repo"} {
		if err := os.Symlink(target, filepath.Join(pd, link)); err != nil {
			t.Fatal(err)
		}
	}
	proc, err := NewProcfs(dir, v1)
	if err != nil {
		t.Fatal(err)
	}
	return proc, root
}

func TestConvertExec(t *testing.T) {
	const gone = 1 << 30 // above any pid_max: not in the fixture
	args := []byte("restic\x00backup\x00--tag\x00nightly run\x00")
	exec := func(pid uint32) bpf.Record {
		return bpf.Record{Type: bpf.TypeExec, TGID: pid, TID: pid, PPID: 4200, Born: 4_000_000_123, Time: 5_000_000_000,
			CgroupID: 0, Comm: []byte("restic"), Filename: []byte("./restic"), Args: args, Held: true}
	}
	wantProc := func(pid int, exe, cgroup string) node.Event {
		return node.Event{Type: node.EventExec, Time: 5 * time.Second, PID: pid, Born: 4_000_000_123, PPID: 4200,
			Proc: &node.Process{PID: pid, PPID: 4200, Comm: "restic", Args: []string{"restic", "backup", "--tag", "nightly run"},
				Exe: exe, Cgroup: cgroup, Start: 5 * time.Second, Born: 4_000_000_123, Held: true}}
	}
	t.Run("v2", func(t *testing.T) {
		proc, _ := resticFixture(t, false)
		r := runFake(t, proc, 0)
		// Exe and cgroup from procfs: the deleted binary's path, the
		// unified hierarchy's line.
		r.want(t, exec(resticPID), wantProc(resticPID, "/usr/local/bin/restic", fixturePodCgroup))
		// Gone already: the path execve was given; no cgroup id, no cgroup.
		r.want(t, exec(gone), wantProc(gone, "./restic", ""))
	})
	t.Run("v1", func(t *testing.T) {
		proc, _ := resticFixture(t, true)
		r := runFake(t, proc, 0)
		r.want(t, exec(resticPID), wantProc(resticPID, "/usr/local/bin/restic",
			"/kubepods/burstable/pod0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d/5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"))
		// The kernel's cgroup id is a v2 one: on a v1 node it names no
		// freezer cgroup, so a gone process's cgroup stays unknown.
		rec := exec(gone)
		rec.CgroupID = 1
		r.want(t, rec, wantProc(gone, "./restic", ""))
	})
}

func TestConvertForkExitReap(t *testing.T) {
	proc, _ := resticFixture(t, false)
	r := runFake(t, proc, 0)
	const kid = resticPID + 1 // not in the fixture: gone when read
	r.want(t, bpf.Record{Type: bpf.TypeFork, TGID: kid, TID: kid, PPID: resticPID, Born: 7, Time: 8},
		node.Event{Type: node.EventFork, PID: kid, PPID: resticPID, Born: 7, Time: 8})
	// The fork remembered the child's cwd (its parent's, the child being
	// gone): a relative path of the child resolves against it.
	r.want(t, bpf.Record{Type: bpf.TypeFile, FileOp: bpf.OpUnlink, TGID: kid, Time: 9, Dirfd: unix.AT_FDCWD, Path: []byte("locks/x")},
		node.Event{Type: node.EventFile, PID: kid, Time: 9, File: &node.FileEvent{Op: node.FileUnlink, Path: "/srv/repo/locks/x"}})
	// Exit and reap carry no parent; exit its wait status.
	r.want(t, bpf.Record{Type: bpf.TypeExit, TGID: kid, PPID: resticPID, Born: 7, Time: 10, ExitCode: 9},
		node.Event{Type: node.EventExit, PID: kid, Born: 7, Time: 10, ExitCode: 9})
	r.want(t, bpf.Record{Type: bpf.TypeReap, TGID: kid, PPID: resticPID, Born: 7, Time: 11},
		node.Event{Type: node.EventReap, PID: kid, Born: 7, Time: 11})
	// Reaped: forgotten, its relative path no longer resolves.
	r.dropped(t, bpf.Record{Type: bpf.TypeFile, FileOp: bpf.OpUnlink, TGID: kid, Time: 12, Dirfd: unix.AT_FDCWD, Path: []byte("locks/y")})
	// A record of a type the kernel does not send is dropped.
	r.dropped(t, bpf.Record{Type: 99, TGID: kid})
}

func TestConvertFiles(t *testing.T) {
	proc, root := resticFixture(t, false)
	const created = 0x100000 // the calibrated FMODE_CREATED
	r := runFake(t, proc, created)
	for _, d := range []string{"data/sub", "data/new"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(root, "data/ln")); err != nil {
		t.Fatal(err)
	}
	// What the process's root holds: dev and inode of path.
	stat := func(path string) (dev, ino uint64) {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, path), &st); err != nil {
			t.Fatal(err)
		}
		return st.Dev, st.Ino
	}
	file := func(op bpf.FileOp, path string) bpf.Record {
		return bpf.Record{Type: bpf.TypeFile, FileOp: op, TGID: resticPID, Time: 3, Born: 2, PPID: 4200,
			Dirfd: unix.AT_FDCWD, Dirfd2: unix.AT_FDCWD, Path: []byte(path)}
	}
	ev := func(f node.FileEvent) node.Event {
		return node.Event{Type: node.EventFile, PID: resticPID, Time: 3, Born: 2, File: &f}
	}
	sdev, sino := stat("data/sub")
	ndev, nino := stat("data/new")
	ldev, lino := stat("data/ln")
	kdev := uint32(8<<20 | 3)

	for _, tc := range []struct {
		name string
		rec  func() bpf.Record
		want node.FileEvent
	}{
		{"open excl", func() bpf.Record {
			r := file(bpf.OpOpen, "/data/a")
			r.Flags, r.Dev, r.Ino = unix.O_CREAT|unix.O_EXCL, kdev, 77
			return r
		}, node.FileEvent{Op: node.FileCreate, Path: "/data/a", Dev: unix.Mkdev(8, 3), Ino: 77}},
		{"open created", func() bpf.Record {
			r := file(bpf.OpOpen, "/data/./a")
			r.Flags, r.FMode, r.Dev, r.Ino = unix.O_CREAT, created|0x1, kdev, 78
			return r
		}, node.FileEvent{Op: node.FileCreate, Path: "/data/a", Dev: unix.Mkdev(8, 3), Ino: 78}},
		{"open existing", func() bpf.Record {
			r := file(bpf.OpOpen, "a")
			r.Flags, r.FMode, r.Dev, r.Ino = unix.O_CREAT, 0x1, kdev, 79
			r.Dir, r.HasDir = []byte("/data"), true
			return r
		}, node.FileEvent{Op: node.FileOpen, Path: "/data/a", Dev: unix.Mkdev(8, 3), Ino: 79}},
		{"open no inode", func() bpf.Record {
			r := file(bpf.OpOpen, "/data/a")
			r.Flags = unix.O_CREAT | unix.O_EXCL
			return r
		}, node.FileEvent{Op: node.FileCreate, Path: "/data/a"}},
		{"mkdir", func() bpf.Record {
			r := file(bpf.OpMkdir, "sub")
			r.Dir, r.HasDir = []byte("/data"), true
			return r
		}, node.FileEvent{Op: node.FileMkdir, Path: "/data/sub", Dev: sdev, Ino: sino}},
		{"mkdir cwd", func() bpf.Record { return file(bpf.OpMkdir, "made") },
			// Not in the root: no inode.
			node.FileEvent{Op: node.FileMkdir, Path: "/srv/repo/made"}},
		{"symlink", func() bpf.Record { return file(bpf.OpSymlink, "/data/ln") },
			node.FileEvent{Op: node.FileSymlink, Path: "/data/ln", Dev: ldev, Ino: lino}},
		{"link", func() bpf.Record {
			r := file(bpf.OpLink, "/data/a")
			r.Path2, r.Dir2, r.HasDir2 = []byte("new"), []byte("/data"), true
			return r
		}, node.FileEvent{Op: node.FileLink, Path: "/data/new", Dev: ndev, Ino: nino}},
		{"rename", func() bpf.Record {
			r := file(bpf.OpRename, "/data/old")
			r.Path2 = []byte("/data/new")
			return r
		}, node.FileEvent{Op: node.FileRename, Path: "/data/old", NewPath: "/data/new", Dev: ndev, Ino: nino}},
		{"unlink", func() bpf.Record { return file(bpf.OpUnlink, "/data/sub") },
			node.FileEvent{Op: node.FileUnlink, Path: "/data/sub"}},
		{"rmdir", func() bpf.Record { return file(bpf.OpRmdir, "/data/sub/../sub") },
			node.FileEvent{Op: node.FileUnlink, Path: "/data/sub"}},
	} {
		t.Run(tc.name, func(t *testing.T) { r.want(t, tc.rec(), ev(tc.want)) })
	}

	for _, tc := range []struct {
		name string
		rec  func() bpf.Record
	}{
		{"truncated", func() bpf.Record {
			r := file(bpf.OpMkdir, "/data/long")
			r.PathTruncated = true
			return r
		}},
		{"truncated new name", func() bpf.Record {
			r := file(bpf.OpRename, "/data/a")
			r.Path2, r.Path2Truncated = []byte("/data/long"), true
			return r
		}},
		{"empty path", func() bpf.Record { return file(bpf.OpUnlink, "") }},
		{"unknown op", func() bpf.Record { return file(99, "/data/a") }},
		{"dirfd gone", func() bpf.Record {
			r := file(bpf.OpMkdir, "x")
			r.Dirfd = 7 // no such fd in the fixture
			return r
		}},
	} {
		t.Run("dropped "+tc.name, func(t *testing.T) { r.dropped(t, tc.rec()) })
	}
}

// Lost records: the growth of the kernel's counter since the last look,
// read when Read times out or is woken; read errors other than those end
// Run with an error.
func TestConvertLost(t *testing.T) {
	proc, _ := resticFixture(t, false)
	tr := newFakeTracer(0)
	tr.setLost(10, nil) // before Run: not news
	r := &fakeRun{tr: tr, events: make(chan node.Event, 64), done: make(chan error, 1)}
	r.src = newTracerSource(tr, proc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { r.done <- r.src.Run(ctx, r.events) }()

	exit := bpf.Record{Type: bpf.TypeExit, TGID: 1, Time: 1}
	exitEv := node.Event{Type: node.EventExit, PID: 1, Time: 1}
	r.want(t, exit, exitEv)
	tr.setLost(17, nil)
	r.fail(t, os.ErrDeadlineExceeded)
	if ev := r.next(t); !reflect.DeepEqual(ev, node.Event{Type: node.EventLost, Lost: 7}) {
		t.Errorf("after 7 more lost: %+v, want a lost event of 7", ev)
	}
	// No growth, or the counter unreadable: nothing to report.
	r.fail(t, bpf.ErrFlushed)
	tr.setLost(0, errors.New("map lookup failed"))
	r.fail(t, os.ErrDeadlineExceeded)
	// A malformed record is skipped.
	r.fail(t, bpf.ErrMalformed)
	r.want(t, exit, exitEv)
	tr.setLost(20, nil)
	r.fail(t, bpf.ErrFlushed)
	if ev := r.next(t); !reflect.DeepEqual(ev, node.Event{Type: node.EventLost, Lost: 3}) {
		t.Errorf("after 3 more lost: %+v, want a lost event of 3", ev)
	}

	broken := errors.New("ring buffer closed")
	r.fail(t, broken)
	select {
	case err := <-r.done:
		if !errors.Is(err, broken) {
			t.Errorf("Run = %v, want %v wrapped", err, broken)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on a read error")
	}
	if ev, ok := <-r.events; ok {
		t.Errorf("event after the read error: %+v; want events closed", ev)
	}
}
