//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultRingBufferSize is the size of the events ring buffer when
// Options.RingBufferSize is 0.
const DefaultRingBufferSize = 2 << 20

// ErrClosed is returned (wrapped) by Read after Close. It is os.ErrClosed.
var ErrClosed = os.ErrClosed

// btfPath is where the kernel's BTF must be for CO-RE (a variable so tests
// can point it elsewhere).
var btfPath = "/sys/kernel/btf/vmlinux"

// Options configure Load.
type Options struct {
	// RingBufferSize is the size in bytes of the events ring buffer: a power
	// of two and a multiple of the page size. 0 means DefaultRingBufferSize.
	RingBufferSize int
	// FileTracing is how file changes are hooked: "" or FileTracingAuto
	// tries fentry and falls back to the syscall tracepoints (FileTracing
	// and FentryUnavailable then say which and why); FileTracingFentry
	// fails when fentry does not load; FileTracingTracepoint never tries.
	FileTracing FileTracing
}

// Tracer owns the loaded programs, their links and maps, and the reader of
// the events ring buffer. Read must be called from one goroutine at a time;
// the other methods are safe for concurrent use.
type Tracer struct {
	objs   overtimeObjects
	links  []link.Link
	rd     *ringbuf.Reader
	rawRec ringbuf.Record

	// The file programs on fentry/fexit, attached from Load to Close, or
	// nil: then the syscall tracepoints below. fentryErr: why not fentry.
	fentry    *fentrySet
	fentryErr error

	// The file syscall programs, attached only while they are needed (see
	// EnableFiles). fmu guards them and the config map.
	fmu              sync.Mutex
	sets             [2]*fileSet
	on               *fileSet // the attached set, nil when none
	filesOn, passAll bool
	spare            *ebpf.Collection // the second set's programs
	// detaching runs the background closes of DisableFiles (about a
	// second each); detachErr is what they failed, guarded by fmu.
	detaching sync.WaitGroup
	detachErr error
	// attachGate lets an attach pass a detach: EnableFiles attaches under
	// its write side, and the background detach closes one link at a time
	// under its read side, so an attach waits for one close at most.
	attachGate sync.RWMutex
	// afterClose, when set (tests), runs after each close of a detach.
	afterClose func()

	// pending holds records read by Calibrate that were not its own; Read
	// delivers them first, in order.
	mu      sync.Mutex
	pending [][]byte

	// holdsBusy is the hold record's busy mark (Holds.MarkBusy).
	holdsBusy *ebpf.Map

	closeOnce sync.Once
	closeErr  error
}

// probe checks the kernel features overtime needs and names what is
// missing.
func probe() error {
	if _, err := os.Stat(btfPath); err != nil {
		return fmt.Errorf("kernel BTF missing (%s): CO-RE needs CONFIG_DEBUG_INFO_BTF: %w", btfPath, err)
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return fmt.Errorf("BPF ring buffer map (kernel >= 5.8) not supported: %w", err)
	}
	if err := features.HaveProgramType(ebpf.TracePoint); err != nil {
		return fmt.Errorf("tracepoint programs not supported: %w", err)
	}
	if err := features.HaveProgramType(ebpf.RawTracepoint); err != nil {
		return fmt.Errorf("raw tracepoint programs not supported: %w", err)
	}
	if err := features.HaveV3ISA(); err != nil {
		// -mcpu=v3: 32-bit jumps and ALU (5.1). No atomic operations
		// past the old XADD are used: those need 5.12.
		return fmt.Errorf("BPF v3 ISA (32-bit jumps, kernel >= 5.1) not supported: %w", err)
	}
	return nil
}

func validRingSize(n int) error {
	page := os.Getpagesize()
	if n <= 0 || n&(n-1) != 0 || n%page != 0 {
		return fmt.Errorf("ring buffer size %d: must be a power of two and a multiple of the page size (%d)", n, page)
	}
	return nil
}

// legacySyscalls are the syscalls an architecture may not have (arm64 has
// only the *at forms); their tracepoints are attached when they exist.
var legacySyscalls = map[string]bool{
	"open": true, "creat": true, "mkdir": true, "symlink": true, "link": true,
	"rename": true, "renameat": true, "unlink": true, "rmdir": true,
}

// Load checks kernel features, loads the programs and attaches the process
// programs (exec, fork, exit, free); the file programs wait for
// EnableFiles.
func Load(opts Options) (*Tracer, error) {
	size := opts.RingBufferSize
	if size == 0 {
		size = DefaultRingBufferSize
	}
	if err := validRingSize(size); err != nil {
		return nil, err
	}
	mode := opts.FileTracing
	if mode == "" {
		mode = FileTracingAuto
	}
	if _, err := ParseFileTracing(string(mode)); err != nil {
		return nil, err
	}
	// Before the probes: where the kernel charges BPF memory to
	// RLIMIT_MEMLOCK (before 5.11) it charges every process of the user
	// together, and the probes' maps would fail with EPERM on a node whose
	// other BPF users (a CNI, an earlier agent's maps not yet freed) hold
	// most of root's limit, refusing the start as "not supported".
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	if err := probe(); err != nil {
		return nil, err
	}
	spec, err := loadOvertime()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	spec.Maps[overtimeMapEvents].MaxEntries = uint32(size)

	t := &Tracer{}
	if t.holdsBusy, err = newBusyMap(); err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		t.holdsBusy.Close()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load BPF programs: %+v", ve)
		}
		return nil, fmt.Errorf("load BPF programs: %w", err)
	}
	if mode != FileTracingTracepoint {
		t.fentry, t.fentryErr = t.loadFentry(size)
		if t.fentryErr != nil && mode == FileTracingFentry {
			err := fmt.Errorf("file tracing on fentry: %w", t.fentryErr)
			t.Close()
			return nil, err
		}
		if t.fentry != nil {
			// Attached for good: a new candidate is never held for them.
			t.filesOn = true
			if err := t.writeConfig(); err != nil {
				t.Close()
				return nil, err
			}
		}
	}
	if err := t.attach(spec); err != nil {
		t.Close()
		return nil, err
	}
	t.rd, err = ringbuf.NewReader(t.objs.Events)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	return t, nil
}

// fileSet is one copy of the file syscall programs. There are two: a
// tracepoint takes a program once, and closing a set's links takes about a
// second in the background, so attaching again meanwhile uses the other.
type fileSet struct {
	enter                 []fileHook
	exit                  *ebpf.Program // tp_exit_file, on every sys_exit_X of enter
	enterLinks, exitLinks []link.Link
	closing               chan struct{} // closed when its links are closed; nil when idle
	open                  atomic.Int32  // its links not closed yet
}

// fileHook is a file syscall program and its tracepoint.
type fileHook struct {
	name string // the C name
	tp   string // sys_enter_X or sys_exit_X
	prog *ebpf.Program
}

// attach attaches the process programs where their sections say, and sets
// the file syscall programs aside for EnableFiles, with a second copy.
func (t *Tracer) attach(spec *ebpf.CollectionSpec) error {
	progs := t.programs()
	t.sets[0] = &fileSet{}
	if t.fentry != nil {
		// The syscall programs are loaded (one object) but never attached.
		return t.attachProcess(spec, progs)
	}
	spare := spec.Copy()
	for name, ps := range spare.Programs {
		if !strings.HasPrefix(ps.SectionName, "tracepoint/syscalls/") {
			delete(spare.Programs, name)
		}
	}
	maps := map[string]*ebpf.Map{
		overtimeMapCommFilter: t.objs.CommFilter, overtimeMapConfig: t.objs.Config,
		overtimeMapEvents: t.objs.Events, overtimeMapFileStash: t.objs.FileStash,
		overtimeMapExited: t.objs.Exited, overtimeMapLost: t.objs.Lost,
		overtimeMapScratch: t.objs.Scratch, overtimeMapDirScratch: t.objs.DirScratch,
		overtimeMapTracked: t.objs.Tracked, overtimeMapHolds: t.objs.Holds, overtimeMapHoldsExpired: t.objs.HoldsExpired,
	}
	coll, err := ebpf.NewCollectionWithOptions(spare, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		return fmt.Errorf("load the second set of file programs: %w", err)
	}
	t.spare = coll
	t.sets[1] = &fileSet{}
	for name, prog := range coll.Programs {
		t.sets[1].add(name, strings.TrimPrefix(spare.Programs[name].SectionName, "tracepoint/syscalls/"), prog)
	}
	return t.attachProcess(spec, progs)
}

// attachProcess attaches the process programs where their sections say and
// puts the file syscall programs in the first set.
func (t *Tracer) attachProcess(spec *ebpf.CollectionSpec, progs map[string]*ebpf.Program) error {
	for name, ps := range spec.Programs {
		prog := progs[name]
		if prog == nil {
			return fmt.Errorf("attach %s: program not loaded", name)
		}
		sec := ps.SectionName
		switch {
		case strings.HasPrefix(sec, "tracepoint/"):
			group, tp, ok := strings.Cut(strings.TrimPrefix(sec, "tracepoint/"), "/")
			if !ok {
				return fmt.Errorf("attach %s: bad section %q", name, sec)
			}
			if group == "syscalls" {
				t.sets[0].add(name, tp, prog)
				continue
			}
			l, err := link.Tracepoint(group, tp, prog, nil)
			if err != nil {
				return fmt.Errorf("attach %s tracepoint %s/%s: %w", hookName(name), group, tp, err)
			}
			t.links = append(t.links, l)
		case strings.HasPrefix(sec, "raw_tracepoint/"):
			tp := strings.TrimPrefix(sec, "raw_tracepoint/")
			l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: prog})
			if err != nil {
				return fmt.Errorf("attach %s raw tracepoint %s: %w", hookName(name), tp, err)
			}
			t.links = append(t.links, l)
		default:
			return fmt.Errorf("attach %s: unknown section %q", name, sec)
		}
	}
	return nil
}

func (fs *fileSet) add(name, tp string, prog *ebpf.Program) {
	if name == overtimeProgTpExitFile {
		fs.exit = prog
		return
	}
	fs.enter = append(fs.enter, fileHook{name: name, tp: tp, prog: prog})
}

// exits are the exit hooks of fs: its exit program on the sys_exit
// tracepoint of each enter hook's syscall.
func (fs *fileSet) exits() []fileHook {
	out := make([]fileHook, 0, len(fs.enter))
	for _, h := range fs.enter {
		out = append(out, fileHook{name: overtimeProgTpExitFile, tp: "sys_exit_" + syscallOf(h.tp), prog: fs.exit})
	}
	return out
}

// programs maps the C name of each loaded program to it.
func (t *Tracer) programs() map[string]*ebpf.Program {
	p := &t.objs.overtimePrograms
	return map[string]*ebpf.Program{
		overtimeProgTpExec: p.TpExec, overtimeProgTpExit: p.TpExit,
		overtimeProgRawFork: p.RawFork, overtimeProgRawFree: p.RawFree,
		overtimeProgTpExitFile:       p.TpExitFile,
		overtimeProgTpEnterCreat:     p.TpEnterCreat,
		overtimeProgTpEnterLink:      p.TpEnterLink,
		overtimeProgTpEnterLinkat:    p.TpEnterLinkat,
		overtimeProgTpEnterMkdir:     p.TpEnterMkdir,
		overtimeProgTpEnterMkdirat:   p.TpEnterMkdirat,
		overtimeProgTpEnterOpen:      p.TpEnterOpen,
		overtimeProgTpEnterOpenat:    p.TpEnterOpenat,
		overtimeProgTpEnterOpenat2:   p.TpEnterOpenat2,
		overtimeProgTpEnterRename:    p.TpEnterRename,
		overtimeProgTpEnterRenameat:  p.TpEnterRenameat,
		overtimeProgTpEnterRenameat2: p.TpEnterRenameat2,
		overtimeProgTpEnterRmdir:     p.TpEnterRmdir,
		overtimeProgTpEnterSymlink:   p.TpEnterSymlink,
		overtimeProgTpEnterSymlinkat: p.TpEnterSymlinkat,
		overtimeProgTpEnterUnlink:    p.TpEnterUnlink,
		overtimeProgTpEnterUnlinkat:  p.TpEnterUnlinkat,
	}
}

// syscallOf returns the syscall of a sys_enter_X / sys_exit_X tracepoint.
func syscallOf(tp string) string {
	if s, ok := strings.CutPrefix(tp, "sys_enter_"); ok {
		return s
	}
	s, _ := strings.CutPrefix(tp, "sys_exit_")
	return s
}

// hookName names a program for errors: "exec", "fork", "openat enter"...
func hookName(prog string) string {
	switch prog {
	case overtimeProgTpExec:
		return "exec"
	case overtimeProgRawFork:
		return "fork"
	case overtimeProgTpExit:
		return "exit"
	case overtimeProgRawFree:
		return "free"
	}
	if s, ok := strings.CutPrefix(prog, "tp_enter_"); ok {
		return s + " enter"
	}
	if s, ok := strings.CutPrefix(prog, "tp_exit_"); ok {
		return s + " exit"
	}
	return prog
}

// commKey is the kernel's comm for name: at most 15 bytes, NUL padded.
// Values of the comm filter map (FILTER_* in common.h).
const (
	filterMatch uint8 = 1
	filterHold  uint8 = 2
)

func commKey(name string) [CommLen]byte {
	var k [CommLen]byte
	copy(k[:CommLen-1], name)
	return k
}

// SetFilter replaces the set of comms whose exec is reported (and whose
// process becomes a tracking candidate). all reports every exec, without
// tracking it. A comm in hold is also stopped (SIGSTOP) by the kernel at
// exec, before its first instruction, until user space resumes or kills it
// (for rules with max_running). Comms are truncated to 15 bytes, as the
// kernel does.
func (t *Tracer) SetFilter(comms []string, all bool, hold []string) error {
	want := make(map[[CommLen]byte]uint8, len(comms))
	for _, c := range comms {
		want[commKey(c)] = filterMatch
	}
	for _, c := range hold {
		want[commKey(c)] = filterMatch | filterHold
	}
	// Add before deleting so a comm kept across the change never has a gap.
	for k, flags := range want {
		if err := t.objs.CommFilter.Put(k, flags); err != nil {
			return fmt.Errorf("set comm filter %q: %w", cstr(k[:]), err)
		}
	}
	var stale [][CommLen]byte
	var k [CommLen]byte
	var v uint8
	it := t.objs.CommFilter.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list comm filter: %w", err)
	}
	for _, k := range stale {
		if err := t.objs.CommFilter.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete comm filter %q: %w", cstr(k[:]), err)
		}
	}
	t.fmu.Lock()
	defer t.fmu.Unlock()
	t.passAll = all
	return t.writeConfig()
}

// writeConfig writes the config map from passAll and filesOn; fmu held.
func (t *Tracer) writeConfig() error {
	var cfg overtimeConfigVal
	if t.passAll {
		cfg.PassAll = 1
	}
	if t.filesOn {
		cfg.FilesOn = 1
	}
	if err := t.objs.Config.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

// The file syscall programs run on every syscall of theirs on the node and
// make every syscall take the kernel's tracing path: at a few percent of a
// syscall-heavy workload's throughput, they are attached only while
// something is tracked. While they are detached, the exec program stops a
// new candidate (SIGSTOP, Record.Held) so that none of its file changes
// happen before they are traced: user space calls EnableFiles, then resumes
// it.

// FilesEnabled reports whether the file programs are attached: always with
// fentry, while EnableFiles holds with the syscall tracepoints.
func (t *Tracer) FilesEnabled() bool {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	return t.filesOn
}

// EnableFiles attaches the file syscall programs (a no-op when they are,
// and with fentry, whose programs are attached from Load to Close).
func (t *Tracer) EnableFiles() error {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	if t.filesOn {
		return nil
	}
	// The set an earlier DisableFiles is still detaching cannot be
	// attached again before it is done (about a second); the other can at
	// once, so a process held at exec waits milliseconds. Both busy (two
	// detaches within a second): wait for the second set.
	fs := t.sets[0]
	if fs.closing != nil {
		fs = t.sets[1]
	}
	// The processes held at exec wait for this: the guard keeps them held
	// while it lasts (up to its limit), so their first files are recorded.
	defer t.Holds().MarkBusy()()
	for fs.closing != nil {
		done := fs.closing
		t.fmu.Unlock()
		<-done
		t.fmu.Lock()
		if t.filesOn {
			return nil
		}
	}
	// Exits first: a call whose enter ran before it was attached finds no
	// stashed arguments at its exit and is not reported. The other set's
	// programs may still run for a moment: an enter stashes the same
	// arguments twice, the first exit takes them and the second finds none.
	t.attachGate.Lock()
	exits, err := attachSyscalls(fs.exits())
	if err != nil {
		t.attachGate.Unlock()
		return err
	}
	enters, err := attachSyscalls(fs.enter)
	t.attachGate.Unlock()
	if err != nil {
		closeLinks(exits)
		return err
	}
	fs.enterLinks, fs.exitLinks = enters, exits
	fs.open.Store(int32(len(enters) + len(exits)))
	t.on, t.filesOn = fs, true
	if err := t.writeConfig(); err != nil {
		t.on, t.filesOn = nil, false
		fs.enterLinks, fs.exitLinks = nil, nil
		return errors.Join(err, closeLinks(enters), closeLinks(exits), t.writeConfig())
	}
	return nil
}

// DisableFiles detaches the file syscall programs, unless the kernel tracks
// a process: one user space tracks, or a candidate whose exec raced with
// the call. Then they stay attached and it returns false. With fentry
// there is nothing to detach: the programs cost the node's other syscalls
// nothing and report only tracked processes, so they stay attached and it
// returns true.
func (t *Tracer) DisableFiles() (bool, error) {
	t.fmu.Lock()
	defer t.fmu.Unlock()
	if t.fentry != nil {
		return true, nil
	}
	if !t.filesOn {
		return true, nil
	}
	t.filesOn = false
	if err := t.writeConfig(); err != nil {
		t.filesOn = true
		return false, err
	}
	// Every exec program that read files_on set has finished after a
	// grace period, its candidate in tracked.
	if err := syncPrograms(); err != nil {
		t.filesOn = true
		return false, errors.Join(err, t.writeConfig())
	}
	busy, err := t.anyTracked()
	if err != nil || busy {
		t.filesOn = true
		return false, errors.Join(err, t.writeConfig())
	}
	// Closing a tracepoint link waits for RCU grace periods under the
	// kernel's trace event lock, one link after another whoever closes
	// them: about a second for a set, so it is done in the background,
	// one link at a time, pausing for an attach (attachGate): a process
	// held at exec meanwhile waits for one close, not for the set.
	fs := t.on
	t.on = nil
	enters, exits := fs.enterLinks, fs.exitLinks
	fs.enterLinks, fs.exitLinks = nil, nil
	done := make(chan struct{})
	fs.closing = done
	t.detaching.Go(func() {
		// Enters first: a call whose enter ran finds its exit attached.
		err := t.closeLinksYielding(slices.Concat(enters, exits), &fs.open)
		t.fmu.Lock()
		defer t.fmu.Unlock()
		fs.closing = nil
		close(done)
		// Arguments stashed by calls in flight at the detach are dropped,
		// unless the other set was attached meanwhile (its exits take them).
		if !t.filesOn {
			err = errors.Join(err, t.clearStash())
		}
		t.detachErr = errors.Join(t.detachErr, err)
	})
	return true, nil
}

// clearStash deletes the arguments stashed by enter programs whose calls
// had not returned when the programs were detached.
func (t *Tracer) clearStash() error {
	var errs []error
	var k uint64
	var v overtimeFileStash
	var stale []uint64
	it := t.objs.FileStash.Iterate()
	for it.Next(&k, &v) {
		stale = append(stale, k)
	}
	errs = append(errs, it.Err())
	for _, k := range stale {
		if err := t.objs.FileStash.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// attachSyscalls attaches hooks to their syscall tracepoints; a legacy
// syscall the architecture lacks is skipped.
func attachSyscalls(hooks []fileHook) ([]link.Link, error) {
	links := make([]link.Link, 0, len(hooks))
	for _, h := range hooks {
		l, err := link.Tracepoint("syscalls", h.tp, h.prog, nil)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && legacySyscalls[syscallOf(h.tp)] {
				continue
			}
			closeLinks(links)
			return nil, fmt.Errorf("attach %s tracepoint syscalls/%s: %w", hookName(h.name), h.tp, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// closeLinksYielding closes links one after another, each under the read
// side of attachGate, so that EnableFiles gets the kernel's trace event
// lock after the close in flight rather than after all of them (a close
// holds that lock for RCU grace periods, tens of milliseconds).
// open counts the links left.
func (t *Tracer) closeLinksYielding(links []link.Link, open *atomic.Int32) error {
	errs := make([]error, len(links))
	for i, l := range links {
		t.attachGate.RLock()
		errs[i] = l.Close()
		open.Add(-1)
		t.attachGate.RUnlock()
		if t.afterClose != nil {
			t.afterClose()
		}
	}
	return errors.Join(errs...)
}

// closeLinks closes links concurrently (at Close and after a failed
// attach, when nothing waits to attach).
func closeLinks(links []link.Link) error {
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		wg.Go(func() { errs[i] = l.Close() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// membarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL (linux/membarrier.h): it
// returns after an RCU grace period, when every BPF program running at the
// call has finished.
const membarrierCmdGlobal = 1

func syncPrograms() error {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		return fmt.Errorf("wait for running BPF programs: membarrier: %w", errno)
	}
	return nil
}

// anyTracked reports whether the kernel's tracked map has an entry.
func (t *Tracer) anyTracked() (bool, error) {
	var k uint32
	var v overtimeTrackedVal
	it := t.objs.Tracked.Iterate()
	found := it.Next(&k, &v)
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("list tracked: %w", err)
	}
	return found, nil
}

// Tracked flags (common.h TRACK_*).
const (
	trackPending   = 1
	trackConfirmed = 2
)

// Track marks tgid as tracked: its forks (whose children the kernel tracks
// too), exit, reap and file changes are reported from now on. A process
// that is already gone is not added: an entry for it would never be
// removed (the kernel removes one when the process is reaped), and would
// make a later process with its PID look tracked.
func (t *Tracer) Track(tgid int) error {
	key, val := uint32(tgid), overtimeTrackedVal{Flags: trackConfirmed}
	// A candidate or a forked child: the kernel made its entry.
	err := t.objs.Tracked.Update(key, val, ebpf.UpdateExist)
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		if err != nil {
			return fmt.Errorf("track %d: %w", tgid, err)
		}
		return nil
	}
	// No entry: a process found by a scan, or one reaped already (its
	// entry went with it). Add it, then check that it is still there; the
	// kernel removes the entry of one reaped after this check.
	if err := t.objs.Tracked.Update(key, val, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("track %d: %w", tgid, err)
	}
	if err := unix.Kill(tgid, 0); errors.Is(err, unix.ESRCH) { // signal 0: only the check
		return t.Untrack(tgid)
	}
	return nil
}

// Untrack forgets tgid; an unknown tgid is not an error.
func (t *Tracer) Untrack(tgid int) error {
	if err := t.objs.Tracked.Delete(uint32(tgid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrack %d: %w", tgid, err)
	}
	return nil
}

// tracked reports whether tgid is in the kernel's tracked map.
func (t *Tracer) tracked(tgid int) bool {
	var v overtimeTrackedVal
	return t.objs.Tracked.Lookup(uint32(tgid), &v) == nil
}

// Lost returns how many records the kernel could not put in the ring buffer
// since Load (it only grows).
func (t *Tracer) Lost() (uint64, error) {
	var per []uint64
	if err := t.objs.Lost.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read lost counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Read blocks for the next record and decodes it into rec, reusing rec's
// buffers. After Close it returns an error matching ErrClosed (os.ErrClosed).
// A malformed record is returned as an error wrapping ErrMalformed; the
// reader stays usable.
func (t *Tracer) Read(rec *Record) error {
	t.mu.Lock()
	if len(t.pending) > 0 {
		raw := t.pending[0]
		t.pending = t.pending[1:]
		t.mu.Unlock()
		return Decode(raw, rec)
	}
	t.mu.Unlock()
	if err := t.rd.ReadInto(&t.rawRec); err != nil {
		return fmt.Errorf("read ring buffer: %w", err)
	}
	return Decode(t.rawRec.RawSample, rec)
}

// SetDeadline makes Read return an error matching os.ErrDeadlineExceeded
// once t has passed and no record is waiting; the zero time removes it. Call
// it from the goroutine that calls Read, between Reads.
func (t *Tracer) SetDeadline(d time.Time) {
	t.rd.SetDeadline(d)
}

// Wake makes a blocked Read return the records already in the ring buffer,
// then an error matching ErrFlushed. It is safe to call from any goroutine.
func (t *Tracer) Wake() error {
	return t.rd.Flush()
}

// ErrFlushed is returned (wrapped) by Read after Wake.
var ErrFlushed = ringbuf.ErrFlushed

// Close detaches every program, closes the maps and unblocks a pending
// Read. It is safe to call more than once.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		var errs []error
		if t.rd != nil {
			errs = append(errs, t.rd.Close())
		}
		t.detaching.Wait()
		t.fmu.Lock()
		links := t.links
		if t.on != nil {
			links = append(append(links, t.on.enterLinks...), t.on.exitLinks...)
		}
		t.on, t.filesOn = nil, false
		errs = append(errs, t.detachErr)
		t.fmu.Unlock()
		errs = append(errs, closeLinks(links))
		if t.fentry != nil {
			errs = append(errs, t.fentry.close())
		}
		if t.spare != nil {
			t.spare.Close()
		}
		errs = append(errs, t.objs.Close(), t.holdsBusy.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// Pending lists the candidates the kernel tracks that user space has not
// decided on (neither Track nor Untrack): after lost events, the ones whose
// exec record was dropped.
func (t *Tracer) Pending() ([]int, error) {
	var out []int
	var k uint32
	var v overtimeTrackedVal
	it := t.objs.Tracked.Iterate()
	for it.Next(&k, &v) {
		if v.Flags == trackPending {
			out = append(out, int(k))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list tracked: %w", err)
	}
	return out, nil
}
