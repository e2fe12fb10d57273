package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"overtime/bpf"
	"overtime/enforcer"
)

// The hold guard: a small process the agent starts beside itself, holding
// the kernel's record of the processes stopped at exec (bpf.Holds, passed
// as two descriptors). It outlives the agent: whatever kills the agent
// (SIGKILL, the OOM killer), every held process is resumed within the hold
// bound, and at once when the agent is gone. A process the agent decided on
// is off the record, so the guard never touches it.

// guardCommand is the hidden subcommand the agent runs the guard as.
const guardCommand = "hold-guard"

// DefaultHoldBound is how long a process may stay stopped at exec before
// it is resumed whatever the agent is doing.
const DefaultHoldBound = time.Second

// busyHold is how long a hold may last while the agent says it is alive
// and attaching the file programs the hold waits for (bpf.Holds.MarkBusy):
// resuming it earlier would let the process's first files go unrecorded.
// Past that (or past the bound, when it is longer), it is resumed all the
// same.
const busyHold = 10 * time.Second

func cmdGuard(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(guardCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	bound := fs.Duration("bound", DefaultHoldBound, "resume a held process after this long")
	agentPID := fs.Int("agent", 0, "PID of the agent")
	logFormat := fs.String("log-format", "text", "json or text")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil || *bound <= 0 || *agentPID <= 0 {
		fmt.Fprintln(stderr, "overtime hold-guard: bad flags (it is started by overtime run)")
		return exitUsage
	}
	log = log.With("component", "hold-guard")
	holds, err := bpf.OpenHolds(3, 4, 5)
	if err != nil {
		log.Error("open the hold record", "err", err)
		return exitFailure
	}
	defer holds.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g := guard{holds: holds, bound: *bound, agent: *agentPID, log: log}
	g.run(ctx)
	return exitOK
}

type guard struct {
	holds *bpf.Holds
	bound time.Duration
	agent int
	log   *slog.Logger
}

// run checks the record every quarter bound: a hold at least three
// quarters old is resumed (so none waits longer than the bound); when the
// agent is gone or the guard is told to stop, every hold is resumed and the
// guard ends once none is left.
func (g guard) run(ctx context.Context) {
	tick := time.NewTicker(g.bound / 4)
	defer tick.Stop()
	exited := g.agentExit()
	for {
		gone := os.Getppid() != g.agent || ctx.Err() != nil
		select {
		case <-exited:
			gone = true
		default:
		}
		left := g.sweep(gone)
		if gone && left == 0 {
			return
		}
		select {
		case <-ctx.Done():
		case <-exited:
			exited = nil // seen; the loop now sweeps every tick until empty
		case <-tick.C:
		}
	}
}

// agentExit is closed when the agent exits (a pidfd turns readable), so
// its holds are resumed at once, not at the next tick.
func (g guard) agentExit() chan struct{} {
	ch := make(chan struct{})
	fd, err := unix.PidfdOpen(g.agent, 0)
	switch {
	case err == unix.ESRCH:
		close(ch)
		return ch
	case err != nil:
		return nil // no pidfds: the parent check at each tick finds it
	case os.Getppid() != g.agent:
		unix.Close(fd) // the PID names another process now
		close(ch)
		return ch
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		close(ch)
	}()
	return ch
}

// sweep resumes the holds that are due (all of them when all is set) and
// returns how many are left on record.
func (g guard) sweep(all bool) int {
	list, err := g.holds.List()
	if err != nil {
		g.log.Error("list held processes", "err", err)
		return 0
	}
	busy, err := g.holds.BusyUntil()
	if err != nil {
		g.log.Error("read the agent's busy mark", "err", err)
	}
	now := bpf.BootNow()
	var expired uint64
	left := 0
	for _, h := range list {
		if !all && !due(now-h.At, now < busy, g.bound) {
			left++
			continue
		}
		err := enforcer.Resume("/proc", h.PID, h.Born)
		if err := g.holds.Done(h.PID); err != nil {
			g.log.Error("hold record", "pid", h.PID, "err", err)
		}
		if err != nil {
			// Gone, or its PID names another process now: nothing to resume.
			g.log.Debug("held process not resumed", "pid", h.PID, "err", err)
			continue
		}
		expired++
		g.log.Warn("resumed a process held at exec: the agent did not decide on it within the hold bound",
			"pid", h.PID, "held", (now - h.At).Round(time.Millisecond).String(), "agent_gone", all, "agent_attaching", now < busy)
	}
	if expired > 0 {
		if err := g.holds.AddExpired(expired); err != nil {
			g.log.Error("count expired holds", "err", err)
		}
	}
	return left
}

// due reports whether a hold that has lasted held is resumed now: at three
// quarters of the bound (the guard looks every quarter, so none waits past
// it), or, while the agent is busy attaching for it, at busyHold.
func due(held time.Duration, agentBusy bool, bound time.Duration) bool {
	if agentBusy && held < busyHold {
		return false
	}
	return held >= bound-bound/4
}

// startGuard runs the hold guard beside the agent, and again if it ends
// while the agent runs. It returns a function that stops it (the guard
// then resumes whatever is still held) and waits for it.
func startGuard(ctx context.Context, holds *bpf.Holds, bound time.Duration, f runFlags, log *slog.Logger) (func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("hold guard: find own executable: %w", err)
	}
	files, err := holds.Files()
	if err != nil {
		return nil, fmt.Errorf("hold guard: %w", err)
	}
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	args := []string{guardCommand, "--bound", bound.String(), "--agent", strconv.Itoa(os.Getpid()),
		"--log-format", f.logFormat, "--log-level", f.logLevel}
	launch := func() (*exec.Cmd, chan struct{}, error) {
		cmd := exec.Command(exe, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.ExtraFiles = files
		if err := cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("start the hold guard: %w", err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		return cmd, done, nil
	}
	cmd, done, err := launch()
	if err != nil {
		closeFiles()
		return nil, err
	}
	stopped := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer closeFiles()
		for {
			select {
			case <-stopped:
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					log.Error("hold guard did not stop in 5s")
				}
				return
			case <-done:
			}
			if ctx.Err() != nil {
				return
			}
			log.Error("hold guard ended; starting it again", "exit", cmd.ProcessState.String())
			time.Sleep(time.Second)
			var err error
			if cmd, done, err = launch(); err != nil {
				log.Error("hold guard", "err", err)
				return
			}
		}
	}()
	return func() { close(stopped); <-finished }, nil
}
