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

	"overtime/internal/node"
)

// A member blocked in a request to a FUSE daemon that stopped answering
// outlives SIGKILL (uninterruptible sleep, state D, until the daemon
// answers or goes away): it is reported unkillable, counted in the gauge,
// with its wchan and the FUSE mount it is blocked on; the kill is retried,
// and once the daemon is gone the member dies and the gauge falls back.
//
// The FUSE filesystem is mounted in a mount namespace of the helper's own
// (the node's mount table is never touched); the blocked process lives in
// it too, and the agent reads its mounts from /proc/PID/mountinfo.
func TestUnkillableFUSE(t *testing.T) {
	cg, a, helper, pid, mnt := startHungFUSE(t, "")
	b := waitUnkillable(t, a, pid, mnt)
	if !strings.Contains(b.Wchan+strings.Join(b.Stack, " "), "request_wait_answer") &&
		!strings.Contains(b.Wchan+strings.Join(b.Stack, " "), "fuse") {
		t.Fatalf("neither wchan nor stack names the FUSE wait: %+v", b)
	}
	eventually(t, 15*time.Second, "the kill retried", func() bool {
		return len(a.logLines("tree still alive after SIGKILL; killing again")) >= 3
	})
	if !pidAlive(pid) {
		t.Fatal("the engine died: not unkillable after all")
	}
	// The daemon goes: the connection is aborted, the request fails and
	// the pending SIGKILL ends the engine.
	_ = syscall.Kill(-helper.pid, syscall.SIGKILL)
	if !helper.waitDone(10 * time.Second) {
		t.Fatal("the FUSE helper did not die")
	}
	eventually(t, 15*time.Second, "the engine gone and the gauge at 0", func() bool {
		return !pidAlive(pid) && a.metric(`overtime_unkillable_processes{rule="ovt-fuse"}`) == 0
	})
	t.Logf("blocked: wchan %s, stack %v", b.Wchan, b.Stack)
	_ = cg
}

// on_unkillable: force_unmount releases the same unkillable member while
// the daemon still runs: the agent enters the member's mount namespace and
// force-unmounts the FUSE mount (its requests are aborted), the member
// dies, and the mount is gone from that namespace only.
func TestUnkillableFUSEForceUnmount(t *testing.T) {
	_, a, helper, pid, mnt := startHungFUSE(t, "    on_unkillable: force_unmount\n    unmount: [\"MNT\"]\n")
	// The member is unkillable only from its diagnosis to the unmount (a
	// few milliseconds): what happened is read from the actions.
	eventually(t, 30*time.Second, "the engine released by the unmount", func() bool { return !pidAlive(pid) })
	if !helper.alive() {
		t.Fatal("the FUSE daemon died: the engine was not released by the unmount")
	}
	// The engine dies as soon as the unmount aborts its request, maybe
	// before the agent's loop has recorded the unmount's result.
	var unk, got []string
	eventuallyState(t, 10*time.Second, "the unmount recorded", func() (bool, string) {
		unk, got = nil, nil
		for _, ac := range a.actions() {
			switch {
			case ac.Action == "unkillable" && ac.PID == pid:
				unk = append(unk, ac.Reason)
			case ac.Action == "unmount":
				got = append(got, ac.Result+": "+ac.Reason)
			}
		}
		return len(got) > 0, fmt.Sprintf("unkillable %q, unmount %q", unk, got)
	})
	if len(unk) != 2 || !strings.Contains(unk[1], "state D") || !strings.Contains(unk[1], "fuse.ovt mount "+mnt) {
		t.Fatalf("unkillable actions = %q", unk)
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "ok: forced lazy unmount of "+mnt) {
		t.Fatalf("unmount actions = %q", got)
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", helper.pid))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), " "+mnt+" ") {
		t.Fatalf("the FUSE mount is still in the helper's namespace:\n%s", mi)
	}
	eventually(t, 15*time.Second, "the gauge at 0", func() bool {
		return a.metric(`overtime_unkillable_processes{rule="ovt-fuse"}`) == 0
	})
}

// startHungFUSE starts an agent with the ovt-fuse rule (extra appended to
// it, MNT in it standing for the mount point) and the FUSE helper in a mount namespace of its own, inside a test
// cgroup; it returns the helper and the engine it runs: a stat of the
// mount's root that the daemon never answers.
func startHungFUSE(t *testing.T, extra string) (*testCgroup, *agentProc, *proc, int, string) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("OVERTIME_REQUIRE_TOOLS") == "1" {
			t.Fatalf("/dev/fuse: %v", err)
		}
		t.Skipf("/dev/fuse: %v", err)
	}
	unshare := tool(t, "unshare")
	cg := newTestCgroup(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	prog := engine(t, dir, "ovt-fuse", `cd "$1" && exec stat .`)
	a := startAgent(t, `
mode: enforce
rules:
  - name: ovt-fuse
    match: {comm: [ovt-fuse]}
    timeout: 2s
    kill: {signal: SIGTERM, grace: 1s}
`+strings.ReplaceAll(extra, "MNT", mnt))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir,
		unshare, "-m", "--propagation", "private", self, mnt, prog)
	cmd.Env = append(os.Environ(), helperEnv+"=fuse")
	cmd.Stdout, cmd.Stderr = w, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	helper := watch(t, cmd)
	line, err := bufio.NewReader(r).ReadString('\n')
	r.Close()
	if err != nil {
		t.Fatalf("the FUSE helper did not start its engine: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return cg, a, helper, pid, mnt
}

// waitUnkillable waits for the engine to be reported unkillable, blocked
// on the FUSE mount, and checks the gauge, the action and the log.
func waitUnkillable(t *testing.T, a *agentProc, pid int, mnt string) *apiBlocked {
	t.Helper()
	var info apiProcess
	eventually(t, 30*time.Second, "the engine reported unkillable", func() bool {
		info, _ = a.process(pid)
		return info.State == "unkillable" && info.Blocked != nil
	})
	b := info.Blocked
	if b.State != "D" || b.FSType != "fuse.ovt" || b.MountPoint != mnt || b.Source != "ovt-hung" {
		t.Fatalf("blocked = %+v, want state D on the fuse.ovt mount %s", b, mnt)
	}
	if v := a.metric(`overtime_unkillable_processes{rule="ovt-fuse"}`); v != 1 {
		t.Fatalf("unkillable gauge = %v, want 1", v)
	}
	found := false
	for _, ac := range a.actions() {
		if ac.PID == pid && ac.Action == "unkillable" && strings.Contains(ac.Reason, "fuse.ovt mount "+mnt) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no unkillable action naming the mount: %+v", a.actions())
	}
	if len(a.logLines("unkillable: blocked in the kernel")) == 0 {
		t.Fatal("no unkillable log line")
	}
	return b
}

type apiBlocked = node.Blocked
