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
}

// Holds returns the tracer's hold record.
func (t *Tracer) Holds() *Holds {
	return &Holds{held: t.objs.Holds, expired: t.objs.HoldsExpired}
}

// Files returns the two maps as files to hand to a child process (in
// exec.Cmd.ExtraFiles order); OpenHolds takes their descriptors there.
func (h *Holds) Files() ([]*os.File, error) {
	var out []*os.File
	for _, m := range []*ebpf.Map{h.held, h.expired} {
		c, err := m.Clone()
		if err != nil {
			return nil, fmt.Errorf("duplicate the holds map: %w", err)
		}
		out = append(out, os.NewFile(uintptr(c.FD()), "overtime-holds"))
	}
	return out, nil
}

// OpenHolds opens the hold record from the descriptors Files handed down.
func OpenHolds(heldFD, expiredFD int) (*Holds, error) {
	held, err := ebpf.NewMapFromFD(heldFD)
	if err != nil {
		return nil, fmt.Errorf("open the holds map (fd %d): %w", heldFD, err)
	}
	expired, err := ebpf.NewMapFromFD(expiredFD)
	if err != nil {
		held.Close()
		return nil, fmt.Errorf("open the expired holds counter (fd %d): %w", expiredFD, err)
	}
	return &Holds{held: held, expired: expired}, nil
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
	return errors.Join(h.held.Close(), h.expired.Close())
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
