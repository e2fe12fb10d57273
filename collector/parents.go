package collector

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"overtime/internal/node"
)

// parentWatch waits for parents to exit: one pidfd per parent (a pidfd
// turns readable when its process exits), shared by all the children
// watched of that parent, in one epoll set waited on by one goroutine. A
// node whose manager starts thousands of engines costs one descriptor and
// no goroutine per engine.
type parentWatch struct {
	mu       sync.Mutex
	epfd     int // -1 until the first watch
	stopfd   int // an eventfd in the set: written to stop the waiter
	byFd     map[int32]*watched
	byParent map[int]*watched // the live watch of each parent PID
	childOf  map[int]*watched
	closed   bool
	done     chan struct{}
	pending  chan node.Event
	wake     func()
}

// watched is one parent's pidfd and the children waiting on it.
type watched struct {
	fd       int
	parent   int
	children map[int]struct{}
}

func newParentWatch(wake func()) *parentWatch {
	return &parentWatch{
		epfd: -1, stopfd: -1,
		byFd: map[int32]*watched{}, byParent: map[int]*watched{}, childOf: map[int]*watched{},
		done: make(chan struct{}), pending: make(chan node.Event, 4096), wake: wake,
	}
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
		if p, perr := s.proc.Process(child); errors.Is(err, unix.ESRCH) && perr == nil && p.PPID != parent {
			// The parent is gone and the child was reparented.
			s.pw.push(node.Event{Type: node.EventOrphan, PID: child, PPID: parent})
			return nil
		}
		return fmt.Errorf("pidfd of parent %d: %w", parent, err)
	}
	if p, err := s.proc.Process(child); err != nil || p.PPID != parent {
		unix.Close(fd)
		if err == nil {
			// Already reparented: the parent is gone.
			s.pw.push(node.Event{Type: node.EventOrphan, PID: child, PPID: parent})
			return nil
		}
		return fmt.Errorf("parent of %d: %w", child, err)
	}
	return s.pw.add(child, parent, fd)
}

// add watches parent (whose pidfd is fd, now owned by the watch) for child.
func (w *parentWatch) add(child, parent, fd int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		unix.Close(fd)
		return errors.New("parent watch closed")
	}
	if w.epfd < 0 {
		if err := w.start(); err != nil {
			unix.Close(fd)
			return err
		}
	}
	w.unwatchLocked(child)
	// A watch of this PID whose process is alive is of this very parent:
	// two live processes never share a PID.
	if wd := w.byParent[parent]; wd != nil && unix.PidfdSendSignal(wd.fd, 0, nil, 0) == nil {
		unix.Close(fd)
		wd.children[child] = struct{}{}
		w.childOf[child] = wd
		return nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch parent %d: epoll: %w", parent, err)
	}
	wd := &watched{fd: fd, parent: parent, children: map[int]struct{}{child: {}}}
	w.byFd[int32(fd)] = wd
	w.byParent[parent] = wd
	w.childOf[child] = wd
	return nil
}

// start makes the epoll set and its waiter; mu held.
func (w *parentWatch) start() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("parent watch: epoll: %w", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(stopfd)}
		if err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stopfd, &ev); err != nil {
			unix.Close(stopfd)
		}
	}
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("parent watch: eventfd: %w", err)
	}
	w.epfd, w.stopfd = epfd, stopfd
	go w.run(epfd, stopfd)
	return nil
}

// run waits for parents to exit and reports their watched children.
func (w *parentWatch) run(epfd, stopfd int) {
	defer close(w.done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		w.mu.Lock()
		if err != nil {
			w.closeLocked()
			w.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == stopfd {
				w.closeLocked()
				w.mu.Unlock()
				return
			}
			wd := w.byFd[ev.Fd]
			if wd == nil {
				continue
			}
			w.drop(wd)
			for child := range wd.children {
				delete(w.childOf, child)
				w.push(node.Event{Type: node.EventOrphan, PID: child, PPID: wd.parent})
			}
		}
		w.mu.Unlock()
	}
}

// drop ends the watch of one parent; mu held.
func (w *parentWatch) drop(wd *watched) {
	delete(w.byFd, int32(wd.fd))
	if w.byParent[wd.parent] == wd {
		delete(w.byParent, wd.parent)
	}
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, wd.fd, nil)
	unix.Close(wd.fd)
}

// closeLocked releases every descriptor; mu held.
func (w *parentWatch) closeLocked() {
	w.closed = true
	for _, wd := range w.byFd {
		unix.Close(wd.fd)
	}
	clear(w.byFd)
	clear(w.byParent)
	clear(w.childOf)
	unix.Close(w.stopfd)
	unix.Close(w.epfd)
	w.epfd, w.stopfd = -1, -1
}

// close stops the waiter and releases every descriptor.
func (w *parentWatch) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	if w.epfd < 0 {
		w.closed = true
		w.mu.Unlock()
		return
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(w.stopfd, one[:])
	w.mu.Unlock()
	<-w.done
}

func (w *parentWatch) push(ev node.Event) {
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
	w.unwatchLocked(child)
}

func (w *parentWatch) unwatchLocked(child int) {
	wd := w.childOf[child]
	if wd == nil {
		return
	}
	delete(w.childOf, child)
	delete(wd.children, child)
	if len(wd.children) == 0 {
		w.drop(wd)
	}
}

// watching reports how many parents and children are watched.
func (w *parentWatch) watching() (parents, children int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byFd), len(w.childOf)
}
