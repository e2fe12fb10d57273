package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"overtime/internal/node"
)

// eventBatch is how many queued events the loop applies under one lock.
const eventBatch = 256

// Run starts the source, brings the table up to date with the node and
// runs the event loop until ctx is done; then it gives every tree still
// alive back to its original cgroup and removes the cgroups it made.
func (a *Agent) Run(ctx context.Context) error {
	defer close(a.done)
	events := make(chan node.Event, 16384)
	srcCtx, stopSrc := context.WithCancel(context.Background())
	defer stopSrc()
	srcDone := make(chan error, 1)
	go func() { srcDone <- a.src.Run(srcCtx, events) }()
	// Events that arrive during the scan wait in the channel and are
	// applied after it: a process seen twice is recognised by its PID.
	if err := a.start(); err != nil {
		stopSrc()
		drain(events)
		<-srcDone
		return fmt.Errorf("start: %w", err)
	}
	a.mu.Lock()
	a.killsOn()
	a.mu.Unlock()
	a.ready.Store(true)
	a.log.Info("ready", "mode", string(a.cfg.Mode), "rules", len(a.cfg.Rules), "tracked", a.trackedCount())

	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		a.mu.Lock()
		now := a.clock.Now()
		a.tick(now)
		next, ok := a.nextWake()
		in := events
		if a.resyncing {
			// Records after a loss wait for the resync's scan.
			in = nil
		}
		a.mu.Unlock()
		var due <-chan time.Time
		if ok {
			wake.Reset(max(next-now, 0))
			due = wake.C
		}
		select {
		case ev, open := <-in:
			if !open {
				err := <-srcDone
				a.ready.Store(false)
				a.shutdown()
				if err == nil {
					err = errors.New("event source stopped")
				}
				return err
			}
			a.mu.Lock()
			a.handle(ev)
			a.tickIfDue()
			for i := 0; i < eventBatch && !a.resyncing; i++ {
				select {
				case ev, open = <-events:
					if open {
						a.handle(ev)
						// A deadline never waits behind a burst of events.
						a.tickIfDue()
						continue
					}
				default:
				}
				break
			}
			a.mu.Unlock()
		case <-due:
		case r := <-a.back:
			a.mu.Lock()
			r.apply(a)
			a.mu.Unlock()
		case reply := <-a.pings:
			close(reply)
		case cfg := <-a.reloads:
			a.apply(cfg)
		case <-ctx.Done():
			a.ready.Store(false)
			stopSrc()
			drain(events)
			err := <-srcDone
			a.shutdown()
			return err
		}
	}
}

// tickIfDue runs the timers that are due, if any: one clock read when none.
func (a *Agent) tickIfDue() {
	if next, ok := a.nextWake(); ok {
		if now := a.clock.Now(); next <= now {
			a.tick(now)
		}
	}
}

func drain(ch <-chan node.Event) {
	for range ch {
	}
}

// Reload hands the loop a new config. Trees already tracked keep the rule
// and deadline they matched with; new processes are matched with the new
// rules; the mode applies at once.
func (a *Agent) Reload(cfg *Config) { a.reloads <- cfg }

func (a *Agent) apply(cfg *Config) {
	if err := a.setFilter(cfg); err != nil {
		a.log.Error("reload: kernel filter not updated; keeping the old config", "err", err)
		return
	}
	a.mu.Lock()
	old := a.cfg
	a.cfg = cfg
	a.killsOn()
	a.mu.Unlock()
	if cfg.Listen != old.Listen {
		a.log.Warn("reload: listen address changes only at restart", "listen", old.Listen)
	}
	a.log.Info("config reloaded", "mode", string(cfg.Mode), "rules", len(cfg.Rules))
}

// shutdown gives every tree back: its live members return to the cgroup
// they came from and the tree cgroups are removed.
func (a *Agent) shutdown() {
	if a.killer != nil {
		a.killer.stop()
	}
	// Cleanups in flight finish first (each releases its tree after it);
	// what they report meanwhile is recorded, the rest is dropped.
	cleaned := make(chan struct{})
	go func() { a.cleaning.Wait(); close(cleaned) }()
	for waiting := true; waiting; {
		select {
		case <-cleaned:
			waiting = false
		case r := <-a.back:
			if rs, ok := r.(removals); ok {
				a.mu.Lock()
				rs.apply(a)
				a.mu.Unlock()
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Live trees go the way of ended ones (see release): their members
	// back to the cgroup they came from, the cgroup removed, retried while
	// its last tasks finish exiting. The stop waits for those and for
	// removals of ended trees still running or waiting for a retry.
	trees := a.trees
	for _, t := range trees {
		a.release(t)
		for pid := range t.members {
			a.untrack(pid)
		}
	}
	a.releasing.Wait()
	// Candidates the kernel stopped at exec whose records were not handled
	// run on.
	if pending, err := a.src.Pending(); err == nil && len(pending) > 0 {
		if scan, err := a.src.Scan(); err == nil {
			a.settlePending(pending, scan)
		}
	}
	// Their resumes are queued behind the confinements.
	a.queuedDone()
	a.log.Info("stopped", "released_trees", len(trees))
}

func (a *Agent) trackedCount() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.procs)
}

// setFilter tells the kernel which execs the rules of cfg may match, and
// which it holds at exec.
func (a *Agent) setFilter(cfg *Config) error {
	f := cfg.Filter()
	if err := a.src.SetFilter(f.Comms, f.All, f.Hold); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.filesFilter(f.All)
	return nil
}
