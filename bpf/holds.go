//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Hold is a process the exec program stopped (SIGSTOP) that user space has
// not decided on yet.
type Hold struct {
	PID  int
	Born time.Duration // its start time, boot clock
	At   time.Duration // when it was stopped, boot clock
}

// Holds is the kernel's record of the processes it holds at exec: the
// tracer's maps, or the same maps handed to another process (the guard
// that outlives the agent) as descriptors.
type Holds struct {
	held, expired *ebpf.Map
	// busy holds one boot-clock time: until then the agent is alive and
	// attaching the file programs its holds wait for (see MarkBusy).
	busy *ebpf.Map
}

// busyRefresh is how often MarkBusy moves the busy mark on, and busyAhead
// how far ahead of now it puts it: an agent stopped or killed mid-attach
// stops moving it, and its holds are due again within busyAhead.
const (
	busyRefresh = 50 * time.Millisecond
	busyAhead   = 4 * busyRefresh
)

// newBusyMap makes the single-slot map of the busy mark.
func newBusyMap() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "holds_busy", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create the holds busy map: %w", err)
	}
	return m, nil
}

// Holds returns the tracer's hold record.
func (t *Tracer) Holds() *Holds {
	return &Holds{held: t.objs.Holds, expired: t.objs.HoldsExpired, busy: t.holdsBusy}
}

// Files returns the three maps as files to hand to a child process (in
// exec.Cmd.ExtraFiles order); OpenHolds takes their descriptors there.
func (h *Holds) Files() ([]*os.File, error) {
	var out []*os.File
	for _, m := range []*ebpf.Map{h.held, h.expired, h.busy} {
		// A descriptor of the file's own: a Map's descriptor is closed
		// when the Map is collected (a Clone wrapped in a File was, and
		// the guard's fork/exec then failed with EBADF, or could have
		// handed down whatever took the number next).
		fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, f := range out {
				f.Close()
			}
			return nil, fmt.Errorf("duplicate the holds map: %w", err)
		}
		out = append(out, os.NewFile(uintptr(fd), "overtime-holds"))
	}
	return out, nil
}

// OpenHolds opens the hold record from the descriptors Files handed down,
// in its order.
func OpenHolds(fds ...int) (*Holds, error) {
	if len(fds) != 3 {
		return nil, fmt.Errorf("open the hold record: %d descriptors, want 3", len(fds))
	}
	var maps [3]*ebpf.Map
	for i, fd := range fds {
		m, err := ebpf.NewMapFromFD(fd)
		if err != nil {
			for _, m := range maps[:i] {
				m.Close()
			}
			return nil, fmt.Errorf("open the hold record's map on fd %d: %w", fd, err)
		}
		maps[i] = m
	}
	return &Holds{held: maps[0], expired: maps[1], busy: maps[2]}, nil
}

// MarkBusy tells the guard that the agent is alive and attaching what its
// holds wait for, until the returned function is called: the mark is moved
// on every busyRefresh from a goroutine of its own, so a slow attach (the
// kernel's tracepoint lock, a loaded node) does not let a hold expire
// before the process's first file is recorded, while an agent that stops
// or dies mid-attach stops moving it. When done, the mark is left to lapse
// busyAhead later: the time the agent has to decide on the process (track
// and confine it, then resume it) once the attach is done.
func (h *Holds) MarkBusy() (done func()) {
	stop, stopped := make(chan struct{}), make(chan struct{})
	mark := func(until time.Duration) { _ = h.busy.Put(uint32(0), uint64(until)) }
	mark(BootNow() + busyAhead)
	go func() {
		defer close(stopped)
		tick := time.NewTicker(busyRefresh)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				mark(BootNow() + busyAhead)
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
		mark(BootNow() + busyAhead)
	}
}

// BusyUntil reads the busy mark: the boot-clock time until which the agent
// said it is attaching (0 before it ever did).
func (h *Holds) BusyUntil() (time.Duration, error) {
	var v uint64
	if err := h.busy.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read the holds busy mark: %w", err)
	}
	return time.Duration(v), nil
}

// BootNow reads CLOCK_BOOTTIME, the clock of the hold record's times.
func BootNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

// List returns every hold on record.
func (h *Holds) List() ([]Hold, error) {
	var out []Hold
	var k uint32
	var v overtimeHeldVal
	it := h.held.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Hold{PID: int(k), Born: time.Duration(v.Born), At: time.Duration(v.At)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list holds: %w", err)
	}
	return out, nil
}

// Done takes pid off the record: it was resumed or ended.
func (h *Holds) Done(pid int) error {
	if err := h.held.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("holds: delete %d: %w", pid, err)
	}
	return nil
}

// Expired counts the holds resumed at the bound because nobody decided.
func (h *Holds) Expired() (uint64, error) {
	var n uint64
	if err := h.expired.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read expired holds: %w", err)
	}
	return n, nil
}

// AddExpired adds n to the expired count (one writer: the guard).
func (h *Holds) AddExpired(n uint64) error {
	cur, err := h.Expired()
	if err != nil {
		return err
	}
	return h.expired.Put(uint32(0), cur+n)
}

// Close releases the maps.
func (h *Holds) Close() error {
	return errors.Join(h.held.Close(), h.expired.Close(), h.busy.Close())
}

// bpffsMagic is BPF_FS_MAGIC (linux/magic.h).
const bpffsMagic = 0xcafe4a11

// ErrNoBPFFS: the pin directory is not on a bpf filesystem.
var ErrNoBPFFS = errors.New("not a bpf filesystem")

// PinHolds pins the hold record under dir (on the node's bpffs), so that it
// outlives this process and its guard: if both are killed at once, the next
// agent finds what they left. A record an earlier agent left there is
// returned, its pins replaced by this tracer's; the caller resumes those
// processes. UnpinHolds removes the pins at a clean stop.
func (t *Tracer) PinHolds(dir string) ([]Hold, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(dir), &st); err != nil {
		return nil, fmt.Errorf("pin holds: %w", err)
	}
	if st.Type != bpffsMagic {
		return nil, fmt.Errorf("pin holds in %s: %w", dir, ErrNoBPFFS)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin holds: %w", err)
	}
	var old []Hold
	heldPin := filepath.Join(dir, "holds")
	if m, err := ebpf.LoadPinnedMap(heldPin, nil); err == nil {
		old, err = (&Holds{held: m}).List()
		m.Close()
		if err != nil {
			return nil, err
		}
		if err := os.Remove(heldPin); err != nil {
			return nil, fmt.Errorf("unpin the last agent's holds: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open the last agent's holds %s: %w", heldPin, err)
	}
	if err := t.objs.Holds.Pin(heldPin); err != nil {
		return old, fmt.Errorf("pin holds: %w", err)
	}
	return old, nil
}

// UnpinHolds removes the pin PinHolds made.
func (t *Tracer) UnpinHolds() error {
	if !t.objs.Holds.IsPinned() {
		return nil
	}
	return t.objs.Holds.Unpin()
}
