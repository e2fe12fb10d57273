package agent

import (
	"fmt"
	"strings"
	"time"

	"overtime/internal/node"
)

// Stall detection. A tree whose rule sets stall is sampled about stall/10
// apart on the timer heap: the bytes its members read and wrote (rchar +
// wchar: files, pipes and sockets) and the CPU they used. Samples are read
// off the loop, by the Progress port, in passes that batch every tree due
// and run at most once a second; each pass comes back to the loop as a
// result, and the loop decides.
//
// A sample sees progress when the members moved data since the last one,
// or used at least 1% of one CPU since the last progress. So when a tree
// is found stalled, for the whole time since its last progress (at least
// stall) it moved no data and used under 1% of a CPU: the contract's rule.
//
// Data is bytes beyond wakeupBytes per read or write call. A runtime wakes
// itself through a pipe or an eventfd: Go's netpoller, in an engine blocked
// on a dead backend, reads and writes 1 byte (a pipe, Go before 1.21) or 8
// (an eventfd) every second or so, forever (measured here: restic 0.14
// moves 2 bytes every 1.5 s while it waits on its stdin). Those calls carry
// no data; real I/O moves kilobytes a call.

// wakeupBytes is the most a read or write call moves without counting as
// data: an eventfd's 8 bytes.
const wakeupBytes = 8

// passEvery is the least time between two procfs passes.
const passEvery = time.Second

// unkillableAfter is how long after SIGKILL a member still alive counts as
// unkillable (uninterruptible sleep: the kill waits for the kernel).
const unkillableAfter = 3 * time.Second

// stallReason starts the action reason of a tree ended for its stall.
const stallReason = "stalled"

// samplePass is one procfs pass: the trees it was for, what was read, and
// when (the time it was started).
type samplePass struct {
	at    time.Duration
	trees []*tree
	usage []node.Usage
}

// diagnosis is what an unkillable member is blocked on.
type diagnosis struct {
	pid     int
	born    time.Duration
	blocked node.Blocked
	err     error
}

// sampleEvery is how far apart a tree's samples are.
func sampleEvery(r *Rule) time.Duration { return r.Stall / 10 }

// watchProgress starts sampling t, when its rule has a stall.
func (a *Agent) watchProgress(t *tree, now time.Duration) {
	if t.rule.Stall <= 0 || a.prog == nil {
		return
	}
	t.lastProgress, t.sampledAt = now, now
	a.timers.add(timer{at: now + sampleEvery(t.rule), kind: timerSample, tree: t})
}

// sampled reports whether t is still sampled: it is alive and not being
// ended (in monitor mode a stalled tree is watched on, to see it resume).
func (a *Agent) sampled(t *tree) bool {
	return t.rule.Stall > 0 && !t.ended && a.trees[t.name] == t && !t.signalled && !t.killed
}

// sampleDue queues t for the next pass.
func (a *Agent) sampleDue(t *tree, now time.Duration) {
	if t.sampling || !a.sampled(t) {
		return
	}
	t.sampling = true
	a.due = append(a.due, t)
	a.startPass(now)
}

// startPass starts a procfs pass for the trees due, unless one is in
// flight or the last started less than passEvery ago (then the timer heap
// starts it when that has passed).
func (a *Agent) startPass(now time.Duration) {
	if a.passBusy || len(a.due) == 0 {
		return
	}
	if a.passEver && now < a.lastPass+passEvery {
		if !a.passArmed {
			a.passArmed = true
			a.timers.add(timer{at: a.lastPass + passEvery, kind: timerPass})
		}
		return
	}
	trees := a.due
	a.due = nil
	var members []node.Member
	for _, t := range trees {
		for _, p := range t.members {
			if !p.exited {
				members = append(members, node.Member{PID: p.PID, Born: p.Born})
			}
		}
	}
	a.passBusy, a.passEver, a.lastPass = true, true, now
	a.work(func() {
		a.report(samplePass{at: now, trees: trees, usage: a.prog.Sample(members)})
	})
}

func (pass samplePass) apply(a *Agent) { a.applyPass(pass) }

// applyPass takes a pass's result on the loop.
func (a *Agent) applyPass(pass samplePass) {
	a.passBusy = false
	byPID := make(map[int]node.Usage, len(pass.usage))
	for _, u := range pass.usage {
		byPID[u.PID] = u
	}
	for _, t := range pass.trees {
		t.sampling = false
		if !a.sampled(t) {
			continue
		}
		a.progress(t, pass.at, byPID)
		if a.sampled(t) {
			a.timers.add(timer{at: pass.at + sampleEvery(t.rule), kind: timerSample, tree: t})
		}
	}
	a.startPass(a.clock.Now())
}

// progress applies one sample of t taken at at.
func (a *Agent) progress(t *tree, at time.Duration, byPID map[int]node.Usage) {
	var io, calls uint64
	var cpu time.Duration
	for pid, p := range t.members {
		u, ok := byPID[pid]
		if p.exited || !ok || u.Born != p.Born {
			continue
		}
		switch {
		case p.sampled:
			if u.IO > p.io {
				io += u.IO - p.io
			}
			if u.Calls > p.calls {
				calls += u.Calls - p.calls
			}
			if u.CPU > p.cpu {
				cpu += u.CPU - p.cpu
			}
		case p.Born > t.sampledAt:
			// Forked since the last sample: all it did is new.
			io += u.IO
			calls += u.Calls
			cpu += u.CPU
		}
		p.io, p.calls, p.cpu, p.sampled = u.IO, u.Calls, u.CPU, true
	}
	t.sampledAt = at
	t.cpuSince += cpu
	if io > calls*wakeupBytes || (t.cpuSince > 0 && t.cpuSince*100 >= at-t.lastProgress) {
		if t.stalled {
			t.stalled = false
			a.log.Info("progress again after a stall", a.rootAttrs(t)...)
		}
		t.lastProgress, t.cpuSince = at, 0
		return
	}
	if !t.stalled && at-t.lastProgress >= t.rule.Stall {
		a.stall(t, at)
	}
}

// stall: t made no progress for its rule's stall; it is ended like an
// overdue tree.
func (a *Agent) stall(t *tree, now time.Duration) {
	t.stalled = true
	idle := now - t.lastProgress
	a.m.stalls.WithLabelValues(t.rule.Name).Inc()
	a.log.Warn("stalled: no data read or written and under 1% of a CPU",
		a.rootAttrs(t, "stall", t.rule.Stall.String(), "no_progress_for", idle.Round(time.Millisecond).String())...)
	t.endStalled = true
	a.end(t, now, fmt.Sprintf("%s: no data read or written and under 1%% of a CPU for %v", stallReason, idle.Round(time.Second)))
}

// unkillable marks the members of t still alive unkillableAfter past the
// first SIGKILL, and asks what each is blocked on.
func (a *Agent) unkillable(t *tree, now time.Duration) {
	for _, p := range t.members {
		if p.exited || p.unkillable {
			continue
		}
		p.unkillable = true
		a.record(t, p.PID, "unkillable", "error", fmt.Sprintf("alive %v after SIGKILL", (now-t.killedAt).Round(time.Second)))
		a.log.Error("unkillable: alive after SIGKILL", a.procAttrs(p, "since_kill", (now-t.killedAt).Round(time.Millisecond).String())...)
		if a.prog == nil {
			continue
		}
		pid, born := p.PID, p.Born
		a.work(func() {
			b, err := a.prog.Diagnose(pid, born)
			a.report(diagnosis{pid: pid, born: born, blocked: b, err: err})
		})
	}
}

func (d diagnosis) apply(a *Agent) { a.applyDiagnosis(d) }

// applyDiagnosis records what an unkillable member is blocked on.
func (a *Agent) applyDiagnosis(d diagnosis) {
	p, ok := a.procs[d.pid]
	if !ok || p.Born != d.born || p.exited || d.err != nil {
		return
	}
	b := d.blocked
	p.blocked = &b
	why := "blocked in the kernel: state " + b.State
	if b.Wchan != "" {
		why += ", wchan " + b.Wchan
	}
	if b.MountPoint != "" {
		why += fmt.Sprintf(", on %s mount %s (%s)", b.FSType, b.MountPoint, b.Source)
	}
	a.record(p.tree, p.PID, "unkillable", "error", why)
	attrs := []any{"state", b.State, "wchan", b.Wchan}
	if len(b.Stack) > 0 {
		attrs = append(attrs, "stack", strings.Join(b.Stack, " < "))
	}
	if b.MountPoint != "" {
		attrs = append(attrs, "fs_type", b.FSType, "mount_point", b.MountPoint, "source", b.Source, "file", b.File)
	}
	a.log.Error("unkillable: "+why, a.procAttrs(p, attrs...)...)
	a.forceUnmount(p, b.MountPoint)
}

// unmounted is the result of a forced unmount.
type unmounted struct {
	tree       *tree
	pid        int
	mountPoint string
	err        error
}

// forceUnmount runs the rule's on_unkillable: force_unmount for member p
// blocked on mountPoint, once per tree and mount, and only for a mount
// point one of the rule's unmount globs names.
func (a *Agent) forceUnmount(p *proc, mountPoint string) {
	t, r := p.tree, p.tree.rule
	if r.OnUnkillable != ForceUnmount || mountPoint == "" || t.unmounted[mountPoint] {
		return
	}
	if t.unmounted == nil {
		t.unmounted = map[string]bool{}
	}
	t.unmounted[mountPoint] = true
	named := false
	for _, g := range r.Unmount {
		named = named || matchPath(g, mountPoint)
	}
	switch {
	case !named:
		a.record(t, p.PID, "unmount", "skipped", "mount point "+mountPoint+" matches no unmount glob")
		a.log.Warn("unkillable: its mount matches no unmount glob; left mounted", a.procAttrs(p, "mount_point", mountPoint)...)
	case a.monitor():
		a.record(t, p.PID, "unmount", "skipped_monitor", "would force-unmount "+mountPoint)
		a.log.Warn("unkillable: would force-unmount its mount (monitor mode)", a.procAttrs(p, "mount_point", mountPoint)...)
	case a.unm != nil:
		pid, born := p.PID, p.Born
		a.work(func() {
			err := a.unm.ForceUnmount(pid, born, mountPoint)
			a.report(unmounted{tree: t, pid: pid, mountPoint: mountPoint, err: err})
		})
	}
}

func (u unmounted) apply(a *Agent) { a.applyUnmount(u) }

// applyUnmount records a forced unmount's result.
func (a *Agent) applyUnmount(u unmounted) {
	if u.err != nil {
		a.record(u.tree, u.pid, "unmount", "error", u.mountPoint+": "+u.err.Error())
		a.log.Error("force-unmount failed", a.rootAttrs(u.tree, "member", u.pid, "mount_point", u.mountPoint, "err", u.err)...)
		return
	}
	a.record(u.tree, u.pid, "unmount", "ok", "forced lazy unmount of "+u.mountPoint+" (on_unkillable)")
	a.log.Warn("unkillable: forced a lazy unmount of the mount it was blocked on", a.rootAttrs(u.tree, "member", u.pid, "mount_point", u.mountPoint)...)
}
