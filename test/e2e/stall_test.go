package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const stallConfig = `
mode: %s
rules:
  - name: ovt-stall
    match: {comm: [ovt-blocked, ovt-writer, ovt-busy]}
    timeout: 5m
    stall: 3s
    kill: {signal: SIGTERM, grace: 1s}
`

// stallActions lists the actions on pid whose reason says it stalled.
func (a *agentProc) stallActions(pid int) []string {
	var out []string
	for _, ac := range a.actions() {
		if ac.PID == pid && strings.HasPrefix(ac.Reason, "stalled") {
			out = append(out, ac.Action+"/"+ac.Result)
		}
	}
	return out
}

// Three trees of one rule with stall: 3s. One is blocked reading a FIFO no
// one writes (a shell and its cat: no byte, no CPU): it is ended after its
// stall, minutes before its timeout. One writes a byte every 200 ms and
// uses next to no CPU; one computes and moves no byte: both run on, long
// past three stalls.
func TestStallEndsOnlyTheTreeWithoutProgress(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, fmt.Sprintf(stallConfig, "enforce"))
	blocked := cg.start(t, dir, engine(t, dir, "ovt-blocked", "cat "+fifo))
	busy := cg.start(t, dir, engine(t, dir, "ovt-busy", "i=0; while :; do i=$((i+1)); done"))
	writer := startHelper(t, cg, dir, "ovt-writer", "writer", filepath.Join(dir, "out"))
	started := time.Now()
	eventually(t, 15*time.Second, "the three trees tracked", func() bool {
		_, b := a.process(blocked.pid)
		_, c := a.process(busy.pid)
		_, w := a.process(writer.pid)
		return b && c && w
	})
	if !blocked.waitDone(20 * time.Second) {
		t.Fatal("the blocked tree was not ended 20 s after it started (stall 3s)")
	}
	if e := time.Since(started); e < 3*time.Second {
		t.Fatalf("the blocked tree ended %v after it started, before its stall", e)
	}
	if got := a.stallActions(blocked.pid); len(got) == 0 || got[0] != "signal/ok" {
		t.Fatalf("stall actions on the blocked tree = %v, want signal/ok first", got)
	}
	if v := a.counter(`overtime_stalls_total{rule="ovt-stall"}`); v != 1 {
		t.Fatalf("stalls_total = %v, want 1", v)
	}
	if v := a.counter(`overtime_timeouts_total{rule="ovt-stall"}`); v != 0 {
		t.Fatalf("timeouts_total = %v", v)
	}
	if len(a.logLines("stalled: no data read or written")) != 1 {
		t.Fatalf("stall log lines = %v", a.logLines("stalled"))
	}
	// The other two run on past three stalls from their start.
	eventually(t, 30*time.Second, "the busy and writing trees 10 s old", func() bool {
		b, _ := a.process(busy.pid)
		w, _ := a.process(writer.pid)
		return b.RuntimeSeconds >= 10 && w.RuntimeSeconds >= 10
	})
	if !busy.alive() || !writer.alive() {
		t.Fatalf("a tree making progress was ended: busy alive %v, writer alive %v", busy.alive(), writer.alive())
	}
	if v := a.counter(`overtime_stalls_total{rule="ovt-stall"}`); v != 1 {
		t.Fatalf("stalls_total = %v after 10 s of progress, want still 1", v)
	}
	for _, pid := range []int{busy.pid, writer.pid} {
		p, _ := a.process(pid)
		if p.State != "running" || p.LastProgress == nil || p.StalledSeconds >= 3 {
			t.Fatalf("tree %d making progress: state %s last_progress %v stalled_seconds %v", pid, p.State, p.LastProgress, p.StalledSeconds)
		}
	}
}

// Monitor mode reports a stall (log, metric, actions) and ends nothing.
func TestStallMonitorMode(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, fmt.Sprintf(stallConfig, "monitor"))
	blocked := cg.start(t, dir, engine(t, dir, "ovt-blocked", "cat "+fifo))
	eventually(t, 20*time.Second, "the stall reported", func() bool {
		return a.counter(`overtime_stalls_total{rule="ovt-stall"}`) == 1
	})
	eventually(t, 10*time.Second, "both would-be actions", func() bool {
		return strings.Join(a.stallActions(blocked.pid), ",") == "signal/skipped_monitor,kill/skipped_monitor"
	})
	if len(a.logLines("stalled: would send SIGTERM (monitor mode)")) != 1 {
		t.Fatalf("monitor log lines: %v", a.logLines("stalled"))
	}
	p, ok := a.process(blocked.pid)
	if !ok || !blocked.alive() || p.State != "running" || p.StalledSeconds < 3 {
		t.Fatalf("in monitor mode: alive %v, as tracked %+v", blocked.alive(), p)
	}
	if v := a.counter(`overtime_kills_total{result="skipped_monitor",rule="ovt-stall",signal="SIGTERM"}`); v != 1 {
		t.Fatalf("kills_total skipped_monitor = %v", v)
	}
}

// A hung `restic backup --stdin` (its input never ends) on a local
// repository is ended by its stall long before its timeout, and the lock
// it created is removed: `restic check` passes without `restic unlock`.
func TestResticStallLocalRepoLockRemoved(t *testing.T) {
	tool(t, "restic")
	cg := newTestCgroup(t)
	dir := t.TempDir()
	env := resticEnv(t, dir)
	repo := filepath.Join(dir, "repo")
	mustRunTool(t, dir, env, "restic", "init", "-q", "-r", repo)
	a := startAgent(t, `
mode: enforce
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: 10m
    stall: 3s
    kill: {signal: SIGTERM, grace: 2s}
    cleanup: {paths: ["**/locks/*"]}
`)
	p := cg.launch(t, dir, env, "restic", "-r", repo, "backup", "--stdin", "--stdin-filename", "db.dump")
	started := time.Now()
	waitLocks(t, filepath.Join(repo, "locks"), 1, 15*time.Second)
	if !p.waitDone(30 * time.Second) {
		t.Fatal("the hung restic was not ended 30 s after it started (stall 3s, timeout 10m)")
	}
	t.Logf("restic ended %v after it started", time.Since(started).Round(time.Millisecond))
	if got := a.stallActions(p.pid); len(got) == 0 || got[0] != "signal/ok" {
		t.Fatalf("stall actions = %v", got)
	}
	eventually(t, 15*time.Second, "the lock removed", func() bool {
		return a.counter(`overtime_cleanup_removed_files_total{rule="restic"}`) == 1
	})
	if got := listDir(t, filepath.Join(repo, "locks")); len(got) != 0 {
		t.Fatalf("locks left: %v", got)
	}
	resticCheckClean(t, dir, env, repo)
}

// A real restic backs up to a REST backend on loopback that stops
// answering mid-backup (SIGSTOP): restic is ended after its stall (10s),
// minutes before its timeout. Beside it, a restic held slow by --limit-upload to a
// backend that answers runs well past the same stall and completes.
//
// The REST backend keeps the repository, and its lock, on the server: the
// lock file was written by the server, not by the tree, so overtime leaves
// it (it deletes only what the tree created). restic sees it stale (same
// host, dead PID) once the server answers again: `restic unlock` removes it.
func TestResticStallRESTBackend(t *testing.T) {
	tool(t, "restic")
	cg := newTestCgroup(t)
	dir := t.TempDir()
	env := resticEnv(t, dir)
	// Incompressible data: the hung backup's 24 MiB take 12 s at 2 MiB/s;
	// the slow one's 8 MiB take 16 s at 512 KiB/s.
	for name, size := range map[string]int{"big": 24 << 20, "small": 8 << 20} {
		src := filepath.Join(dir, name)
		if err := os.Mkdir(src, 0o755); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, size)
		_, _ = rand.Read(buf)
		if err := os.WriteFile(filepath.Join(src, "blob"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var servers [2]*proc
	var repos [2]string
	for i := range servers {
		addr := freeAddr(t)
		store := filepath.Join(dir, fmt.Sprintf("server-%d", i))
		servers[i] = startHelper(t, nil, dir, "ovt-rest", "rest", store, addr)
		repos[i] = "rest:http://" + addr + "/"
		eventually(t, 10*time.Second, "the REST backend listening", func() bool {
			_, err := runTool(t, dir, env, "restic", "-r", repos[i], "init", "-q")
			return err == nil
		})
	}
	a := startAgent(t, `
mode: enforce
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: 10m
    stall: 10s
    kill: {signal: SIGTERM, grace: 2s}
    cleanup: {paths: ["**/locks/*"]}
`)
	hung := cg.launch(t, dir, env, "restic", "-r", repos[0], "backup", "--limit-upload", "2048", "big")
	slow := cg.launch(t, dir, env, "restic", "-r", repos[1], "backup", "--limit-upload", "512", "small")
	slowStarted := time.Now()
	// Mid-backup: once the first pack reached the server, it stops answering.
	eventually(t, 30*time.Second, "a pack uploaded", func() bool {
		n := 0
		_ = filepath.Walk(filepath.Join(dir, "server-0", "data"), func(_ string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() && !strings.HasPrefix(fi.Name(), ".") {
				n++
			}
			return nil
		})
		return n > 0
	})
	if !hung.alive() {
		t.Fatalf("restic finished before the backend stopped:\n%s", hung.out.String())
	}
	if err := syscall.Kill(servers[0].pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = syscall.Kill(servers[0].pid, syscall.SIGCONT) })
	if !hung.waitDone(60 * time.Second) {
		t.Fatal("restic on the stopped backend was not ended 60 s after it stopped (stall 3s, timeout 10m)")
	}
	t.Logf("restic ended %v after its backend stopped", time.Since(stopped).Round(time.Millisecond))
	if got := a.stallActions(hung.pid); len(got) == 0 || got[0] != "signal/ok" {
		t.Fatalf("stall actions on the hung restic = %v\n%s", got, hung.out.String())
	}
	// The slow one completes, unharmed, well past the stall.
	if !slow.waitDone(60 * time.Second) {
		t.Fatal("the slow restic did not finish in 60 s")
	}
	if err := slow.err; err != nil || !strings.Contains(slow.out.String(), "snapshot") {
		t.Fatalf("the slow restic: %v\n%s", err, slow.out.String())
	}
	if e := time.Since(slowStarted); e < 10*time.Second {
		t.Fatalf("the slow restic took %v: not slow enough to outlast the stall", e)
	}
	if got := a.stallActions(slow.pid); len(got) != 0 {
		t.Fatalf("the slow restic was taken for stalled: %v", got)
	}
	if v := a.counter(`overtime_stalls_total{rule="restic"}`); v != 1 {
		t.Fatalf("stalls_total = %v, want 1", v)
	}
	// The hung restic's lock is the server's file: left for restic itself.
	locks := listDir(t, filepath.Join(dir, "server-0", "locks"))
	if len(locks) != 1 {
		t.Fatalf("locks on the stopped server = %v, want the hung restic's one", locks)
	}
	if err := syscall.Kill(servers[0].pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	mustRunTool(t, dir, env, "restic", "-r", repos[0], "unlock")
	if got := listDir(t, filepath.Join(dir, "server-0", "locks")); len(got) != 0 {
		t.Fatalf("locks after restic unlock: %v", got)
	}
	resticCheckClean(t, dir, env, repos[0])
}
