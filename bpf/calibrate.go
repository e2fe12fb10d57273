//go:build linux

package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// calibrateTimeout bounds the wait for Calibrate's own records.
const calibrateTimeout = 2 * time.Second

// Calibrate finds the f_mode bit the kernel sets on a struct file whose open
// created its file (FMODE_CREATED): macros are not in BTF and the bit has
// moved between kernel versions. In dir it creates a file with
// openat(O_CREAT|O_WRONLY), reopens it with O_CREAT|O_APPEND and with
// O_CREAT|O_TRUNC, removes it, and returns the single bit set on the first
// open and clear on both reopens. Anything else is an error; the caller then
// treats only O_EXCL as proof of creation.
//
// Calibrate attaches the file programs and leaves them attached; it tracks
// the calling process for the duration and reads the ring
// buffer itself: call it before the consumer starts calling Read, never
// concurrently with Read. Records of other processes read meanwhile are not
// lost: they are kept and delivered, in order, by the following Reads.
func (t *Tracer) Calibrate(dir string) (mask uint32, err error) {
	pid := os.Getpid()
	path := filepath.Join(dir, ".overtime-calibrate-"+strconv.Itoa(pid)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("calibrate: %s already exists", path)
	}
	// The file programs stay attached afterwards: detaching runs for about
	// a second in the background, and an attach meanwhile waits for it in
	// the kernel, so the first engine after start would be held that long.
	// The caller detaches them when it has nothing to trace.
	if err := t.EnableFiles(); err != nil {
		return 0, fmt.Errorf("calibrate: %w", err)
	}
	wasTracked := t.tracked(pid)
	if !wasTracked {
		if err := t.Track(pid); err != nil {
			return 0, fmt.Errorf("calibrate: %w", err)
		}
	}
	opens := []int{
		unix.O_CREAT | unix.O_WRONLY,
		unix.O_CREAT | unix.O_WRONLY | unix.O_APPEND,
		unix.O_CREAT | unix.O_WRONLY | unix.O_TRUNC,
	}
	var openErr error
	for _, fl := range opens {
		fd, err := unix.Openat(unix.AT_FDCWD, path, fl|unix.O_CLOEXEC, 0o600)
		if err != nil {
			openErr = fmt.Errorf("calibrate: open %s: %w", path, err)
			break
		}
		unix.Close(fd)
	}
	rmErr := unix.Unlink(path)
	if !wasTracked {
		if err := t.Untrack(pid); err != nil && openErr == nil {
			openErr = fmt.Errorf("calibrate: %w", err)
		}
	}
	if openErr != nil {
		return 0, openErr
	}
	if rmErr != nil {
		return 0, fmt.Errorf("calibrate: remove %s: %w", path, rmErr)
	}

	// Every record of ours was submitted before the syscalls returned, so
	// they are all in the ring buffer now: read until found or timeout.
	want := []byte(path)
	var modes []uint32
	var inos []uint64
	unlinked := false
	deadline := time.Now().Add(calibrateTimeout)
	t.rd.SetDeadline(deadline)
	defer t.rd.SetDeadline(time.Time{})
	var rec Record
	for len(modes) < len(opens) || !unlinked {
		if err := t.rd.ReadInto(&t.rawRec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, fmt.Errorf("calibrate: saw %d of %d opens of %s before the timeout (events lost?)", len(modes), len(opens), path)
			}
			return 0, fmt.Errorf("calibrate: read ring buffer: %w", err)
		}
		raw := t.rawRec.RawSample
		if Decode(raw, &rec) == nil && rec.Type == TypeFile && rec.TGID == uint32(pid) && bytes.Equal(rec.Path, want) {
			switch {
			case rec.FileOp == OpOpen && len(modes) < len(opens):
				modes = append(modes, rec.FMode)
				inos = append(inos, rec.Ino)
				continue
			case rec.FileOp == OpUnlink:
				unlinked = true
				continue
			}
		}
		t.mu.Lock()
		t.pending = append(t.pending, bytes.Clone(raw))
		t.mu.Unlock()
	}
	if inos[0] == 0 || inos[1] != inos[0] || inos[2] != inos[0] {
		return 0, fmt.Errorf("calibrate: the three opens of %s saw inodes %v", path, inos)
	}
	mask = modes[0] &^ modes[1] &^ modes[2]
	if bits.OnesCount32(mask) != 1 {
		return 0, fmt.Errorf("calibrate: no single f_mode bit tells creation (create %#x, reopen %#x, %#x)", modes[0], modes[1], modes[2])
	}
	return mask, nil
}
