package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
)

// child is a process the bench started. Its exit is seen through its pidfd
// (readable the moment the process exits, before anyone reaps it), so its
// exit time does not depend on when the bench gets round to waiting.
type child struct {
	pid    int
	pidfd  int
	forked time.Duration // boot clock just before the fork
	execd  time.Duration // boot clock once its exec succeeded
	exitAt time.Duration // boot clock when it was seen exited; set before done closes
	status syscall.WaitStatus
	done   chan struct{}
}

// reaper watches the pidfds of every child in one epoll set and reaps each
// child as it exits: one goroutine and no thread per child, for 10,000.
type reaper struct {
	epfd int
	mu   sync.Mutex
	byFD map[int32]*child
	stop chan struct{}
	done chan struct{}
}

func newReaper() (*reaper, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	r := &reaper{epfd: fd, byFD: map[int32]*child{}, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *reaper) add(c *child) error {
	r.mu.Lock()
	r.byFD[int32(c.pidfd)] = c
	r.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(c.pidfd)}
	if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, c.pidfd, &ev); err != nil {
		r.mu.Lock()
		delete(r.byFD, int32(c.pidfd))
		r.mu.Unlock()
		return fmt.Errorf("watch pid %d: %w", c.pid, err)
	}
	return nil
}

func (r *reaper) loop() {
	defer close(r.done)
	// Exits are seen on a real-time thread of its own: beside CPU hogs (the
	// load target) a normal thread would wait for a CPU, and that wait is
	// the bench's, not the agent's. The thread ends with the loop.
	runtime.LockOSThread()
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		fmt.Fprintln(os.Stderr, "bench: exits are seen at the normal priority:", err)
	}
	events := make([]unix.EpollEvent, 512)
	for {
		n, err := unix.EpollWait(r.epfd, events, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			fmt.Fprintln(os.Stderr, "bench: epoll:", err)
			return
		}
		now := bpf.BootNow()
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			r.mu.Lock()
			c := r.byFD[fd]
			delete(r.byFD, fd)
			r.mu.Unlock()
			if c == nil {
				continue
			}
			c.exitAt = now
			for {
				_, err := unix.Wait4(c.pid, (*unix.WaitStatus)(&c.status), 0, nil)
				if !errors.Is(err, unix.EINTR) {
					break
				}
			}
			unix.Close(c.pidfd)
			close(c.done)
		}
		if n == 0 {
			select {
			case <-r.stop:
				return
			default:
			}
		}
	}
}

// signal sends sig to c through its pidfd unless c was already seen
// exiting: a child's pidfd stays open while it is in the set, which r.mu
// guards, so the signal cannot reach another process.
func (r *reaper) signal(c *child, sig unix.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byFD[int32(c.pidfd)] != c {
		return nil
	}
	return unix.PidfdSendSignal(c.pidfd, sig, nil, 0)
}

// killAll SIGKILLs every child not yet seen exiting, through its pidfd:
// how a bare target's processes end without the bench cgroup.
func (r *reaper) killAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.byFD {
		_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
	}
}

// ifLive runs f if c was not seen exiting, while the reaper cannot reap it:
// c.pid is c's throughout f.
func (r *reaper) ifLive(c *child, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byFD[int32(c.pidfd)] == c {
		f()
	}
}

// live counts the children not yet seen exiting.
func (r *reaper) live() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byFD)
}

// waitIdle waits until every child has exited, at most d.
func (r *reaper) waitIdle(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for r.live() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (r *reaper) close() {
	close(r.stop)
	<-r.done
	unix.Close(r.epfd)
}

// launcher starts processes straight into one cgroup (clone3 with
// CLONE_INTO_CGROUP), with a pidfd (CLONE_PIDFD), stdio on /dev/null.
// With no cgroup (dir ""), they start in the bench's own.
type launcher struct {
	dir    string // the cgroup directory
	path   string // the cgroup path, as /proc/PID/cgroup shows it
	cgfd   int    // -1: no cgroup
	r      *reaper
	wd     string
	devnul *os.File
}

func newLauncher(dir, path string, r *reaper, wd string) (*launcher, error) {
	fd := -1
	if dir != "" {
		var err error
		if fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return nil, err
		}
	}
	dn, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	l := &launcher{dir: dir, path: path, cgfd: fd, r: r, wd: wd, devnul: dn}
	// The descriptors live as long as the bench; they are few.
	return l, nil
}

// start runs argv (argv[0] an absolute path) in the launcher's cgroup.
func (l *launcher) start(argv ...string) (*child, error) {
	return l.startWith(l.devnul.Fd(), argv...)
}

// startWith is start with stdout on the descriptor out.
func (l *launcher) startWith(out uintptr, argv ...string) (*child, error) {
	c := &child{pidfd: -1, done: make(chan struct{})}
	nul := l.devnul.Fd()
	attr := &syscall.ProcAttr{
		Dir:   l.wd,
		Env:   []string{"PATH=/usr/bin:/bin"},
		Files: []uintptr{nul, out, nul},
		Sys: &syscall.SysProcAttr{
			UseCgroupFD: l.cgfd >= 0, CgroupFD: l.cgfd,
			PidFD:   &c.pidfd,
			Setpgid: true,
		},
	}
	c.forked = bpf.BootNow()
	pid, err := syscall.ForkExec(argv[0], argv, attr)
	c.execd = bpf.BootNow()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	c.pid = pid
	if c.pidfd < 0 {
		return nil, fmt.Errorf("start %s: no pidfd", argv[0])
	}
	if err := l.r.add(c); err != nil {
		return nil, err
	}
	return c, nil
}

// startPaced starts n processes of argv evenly over d (as fast as it can
// when it falls behind) and returns them in start order.
func (l *launcher) startPaced(n int, d time.Duration, argv ...string) ([]*child, error) {
	out := make([]*child, 0, n)
	begin := bpf.BootNow()
	for i := range n {
		sleepUntil(begin + d*time.Duration(i)/time.Duration(n))
		c, err := l.start(argv...)
		if err != nil {
			return out, err
		}
		out = append(out, c)
	}
	return out, nil
}

// command is an exec.Cmd whose process is born in the launcher's cgroup.
func (l *launcher) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = l.wd
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: l.cgfd >= 0, CgroupFD: l.cgfd, Setpgid: true}
	return cmd
}

// workerCmd is the hidden subcommand the bench re-executes itself as to
// spawn processes as fast as it can, from a process of its own inside the
// bench cgroup:
//
//	bench spawn-worker for DURATION PATH   run PATH in a loop for DURATION
//	bench spawn-worker count N PATH        run PATH N times
//
// Each run is fork+exec then wait; it prints the runs and the seconds taken.
const workerCmd = "spawn-worker"

func spawnWorker(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: spawn-worker for DURATION PATH | count N PATH")
		return 2
	}
	runtime.GOMAXPROCS(1)
	var until time.Time
	limit := -1
	switch args[0] {
	case "for":
		d, err := time.ParseDuration(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		until = time.Now().Add(d)
	case "count":
		n, err := strconv.Atoi(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		limit = n
	default:
		fmt.Fprintln(os.Stderr, "spawn-worker: for or count")
		return 2
	}
	path := args[2]
	nul, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	attr := &syscall.ProcAttr{Env: []string{"PATH=/usr/bin:/bin"}, Files: []uintptr{nul.Fd(), nul.Fd(), nul.Fd()}}
	argv := []string{path}
	start := time.Now()
	n := 0
	for limit < 0 && time.Now().Before(until) || n < limit {
		pid, err := syscall.ForkExec(path, argv, attr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "spawn-worker:", err)
			return 1
		}
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err != syscall.EINTR {
				break
			}
		}
		n++
	}
	fmt.Println(n, time.Since(start).Seconds())
	return 0
}
