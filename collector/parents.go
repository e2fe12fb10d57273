package collector

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// parentWatch waits for parents to exit. Each watch is a pidfd of the
// parent in Go's poller (a pidfd turns readable when its process exits),
// so thousands of watches cost goroutines, not threads.
type parentWatch struct {
	mu      sync.Mutex
	files   map[int]*os.File // by child pid
	pending chan Event
	wake    func()
}

func newParentWatch(wake func()) *parentWatch {
	return &parentWatch{files: map[int]*os.File{}, pending: make(chan Event, 4096), wake: wake}
}

// WatchParent reports EventOrphan for child when parent exits. The parent
// is checked to still be child's parent after its pidfd is open, so a
// parent that already exited (and whose PID was reused) is never watched.
func (s *Source) WatchParent(child, parent int) error {
	if parent <= 1 {
		return nil
	}
	fd, err := unix.PidfdOpen(parent, unix.PIDFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("pidfd of parent %d: %w", parent, err)
	}
	if p, err := s.proc.Process(child); err != nil || p.PPID != parent {
		unix.Close(fd)
		if err == nil {
			// Already reparented: the parent is gone.
			s.pw.push(Event{Type: EventOrphan, PID: child, PPID: parent})
			return nil
		}
		return fmt.Errorf("parent of %d: %w", child, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", parent))
	s.pw.mu.Lock()
	if old := s.pw.files[child]; old != nil {
		old.Close()
	}
	s.pw.files[child] = f
	s.pw.mu.Unlock()
	go s.pw.wait(child, parent, f)
	return nil
}

func (w *parentWatch) wait(child, parent int, f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		exited = n > 0
		return exited
	})
	if err != nil || !exited {
		return // unwatched: the file was closed
	}
	w.mu.Lock()
	if w.files[child] == f {
		delete(w.files, child)
		f.Close()
	}
	w.mu.Unlock()
	w.push(Event{Type: EventOrphan, PID: child, PPID: parent})
}

func (w *parentWatch) push(ev Event) {
	select {
	case w.pending <- ev:
		w.wake()
	default:
		// Full: the table catches up at the next resync; never block.
	}
}

// unwatch drops the watch of child's parent.
func (w *parentWatch) unwatch(child int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if f := w.files[child]; f != nil {
		delete(w.files, child)
		f.Close()
	}
}
