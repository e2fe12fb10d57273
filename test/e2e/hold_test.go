package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guardsOf lists the hold guards the agent with PID agent started.
func guardsOf(agent int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == "hold-guard" && strings.Contains(string(b), "\x00--agent\x00"+strconv.Itoa(agent)+"\x00") {
			out = append(out, pid)
		}
	}
	return out
}

// A process the kernel holds at exec runs on when the agent is killed
// before it decides: the agent is stopped (SIGSTOP) so it cannot decide,
// a capped rule's engine is held at exec, the agent is SIGKILLed, and the
// engine runs (it writes its mark) with no agent at all, long before the
// hold bound; the guard ends.
// A new agent then starts and tracks it. Many rounds.
func TestHoldOutlivesAKilledAgent(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(rule("ovt-heldeng", "10m", "1s", "    max_running: 100\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	const rounds = 10
	for i := range rounds {
		// A long bound: the engine can only run on because the agent is gone.
		a := launchAgent(t, nil, cfg, "--hold-bound", "30s")
		a.waitReady()
		agentPID := a.cmd.Process.Pid
		eventually(t, 5*time.Second, "the hold guard running", func() bool { return len(guardsOf(agentPID)) == 1 })
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		mark := filepath.Join(dir, fmt.Sprintf("ran-%d", i))
		p := cg.start(t, dir, engine(t, dir, "ovt-heldeng", "echo ran > "+mark+"\nsleep 1000"))
		eventually(t, 5*time.Second, "the engine stopped at exec", func() bool { return procState(p.pid) == "T" })
		if _, err := os.Stat(mark); err == nil {
			t.Fatalf("round %d: the engine ran before anyone resumed it", i)
		}
		a.crash()
		// The engine (a shell that stays, its comm the rule's) runs on.
		eventually(t, 5*time.Second, "the held engine running after the agent was killed", func() bool {
			_, err := os.Stat(mark)
			return err == nil && procState(p.pid) != "T"
		})
		eventually(t, 5*time.Second, "the guard gone with nothing left to resume", func() bool { return len(guardsOf(agentPID)) == 0 })
		if i == rounds-1 {
			// A new agent adopts the engine that ran while none was up.
			b := startAgentFile(t, cfg)
			eventually(t, 10*time.Second, "the engine tracked by the next agent", func() bool { _, ok := b.process(p.pid); return ok })
			if st := procState(p.pid); st == "T" {
				t.Fatalf("engine stopped under the new agent")
			}
			b.stop()
		}
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
}

// With file tracing detached every candidate is held at exec, also one that
// matches no rule (Longhorn's replica beside its backup rule). While the
// agent cannot decide (stopped), the guard resumes it within the hold
// bound and counts it.
func TestHeldNonMatchingResumedWithinTheBound(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	cfg := `
mode: enforce
rules:
  - name: ovt-lh
    match: {comm: [ovt-lh], args: [backup]}
    timeout: 10m
`
	a := startAgent(t, cfg, "--file-tracing-idle", "200ms", "--hold-bound", "1s")
	eventually(t, 10*time.Second, "file tracing detached", func() bool { return a.metric("overtime_file_tracing") == 0 })
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = a.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	mark := filepath.Join(dir, "replica-ran")
	start := time.Now()
	p := cg.start(t, dir, engine(t, dir, "ovt-lh", "echo ran > "+mark+"\nexec sleep 1000")+" replica")
	eventually(t, 5*time.Second, "the replica stopped at exec", func() bool {
		_, err := os.Stat(mark)
		return procState(p.pid) == "T" || err == nil
	})
	eventually(t, 5*time.Second, "the replica running again", func() bool {
		_, err := os.Stat(mark)
		return err == nil && procState(p.pid) == "S"
	})
	if held := time.Since(start); held < 700*time.Millisecond {
		t.Fatalf("resumed after %v with the agent stopped: before the guard's bound", held)
	}
	_ = a.cmd.Process.Signal(syscall.SIGCONT)
	resumed = true
	eventually(t, 5*time.Second, "the expired hold counted", func() bool { return a.metric("overtime_holds_expired_total") == 1 })
	if len(a.logLines("resumed a process held at exec")) != 1 {
		t.Fatalf("no log line of the guard's resume:\n%s", a.Log())
	}
	if _, ok := a.process(p.pid); ok {
		t.Fatalf("the replica (no rule) is tracked")
	}
}

// When the agent and its guard are killed together, the hold record pinned
// on the node's bpffs lets the next agent resume the held process before it
// is ready; a clean stop removes the pin. The node here is a mount
// namespace with a bpffs at /sys/fs/bpf, kept by a process of the test.
func TestHoldPinnedForTheNextAgent(t *testing.T) {
	keeper := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"mount -t bpf bpf /sys/fs/bpf && echo ok && exec sleep 1000")
	out, err := keeper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := keeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = keeper.Process.Kill(); _ = keeper.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ok\n" {
		t.Fatalf("mount bpffs in the test's namespace: %q %v", line, err)
	}
	inNode := []string{tool(t, "nsenter"), "--mount=/proc/" + strconv.Itoa(keeper.Process.Pid) + "/ns/mnt"}
	pin := filepath.Join("/proc", strconv.Itoa(keeper.Process.Pid), "root/sys/fs/bpf/overtime/holds")

	cg := newTestCgroup(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(rule("ovt-pinheld", "10m", "1s", "    max_running: 100\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := launchAgent(t, inNode, cfg, "--hold-bound", "30s")
	a.waitReady()
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("hold record not pinned: %v\n%s", err, a.Log())
	}
	guards := guardsOf(a.cmd.Process.Pid)
	if len(guards) != 1 {
		t.Fatalf("guards %v, want one", guards)
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(dir, "ran")
	p := cg.start(t, dir, engine(t, dir, "ovt-pinheld", "echo ran > "+mark+"\nexec sleep 1000"))
	eventually(t, 5*time.Second, "the engine stopped at exec", func() bool { return procState(p.pid) == "T" })
	// Both at once: first the guard, so it cannot resume it.
	if err := syscall.Kill(guards[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.crash()
	eventually(t, 5*time.Second, "the guard gone", func() bool { return len(guardsOf(a.cmd.Process.Pid)) == 0 })
	if st := procState(p.pid); st != "T" {
		t.Fatalf("engine state %q with agent and guard killed, want still stopped (T)", st)
	}

	b := launchAgent(t, inNode, cfg)
	b.waitReady()
	if st := procState(p.pid); st == "T" || st == "" {
		t.Fatalf("engine state %q once the next agent is ready, want running", st)
	}
	eventually(t, 5*time.Second, "the engine ran", func() bool { _, err := os.Stat(mark); return err == nil })
	if len(b.logLines("resumed a process an earlier agent left held at exec")) != 1 {
		t.Fatalf("no log line of the resume:\n%s", b.Log())
	}
	if v := b.metric("overtime_holds_expired_total"); v != 1 {
		t.Fatalf("overtime_holds_expired_total = %v, want 1", v)
	}
	if code := b.stop(); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Fatalf("hold record still pinned after a clean stop: %v", err)
	}
}
