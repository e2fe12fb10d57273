package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// noTracefs runs its arguments in a private mount namespace in which
// tracefs and debugfs are not mounted, whatever the host has: a fresh node.
var noTracefs = []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
	`for m in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do umount -l "$m" 2>/dev/null; done
	 if grep -qE ' (tracefs|debugfs) ' /proc/self/mountinfo; then echo "tracefs still mounted" >&2; exit 97; fi
	 exec "$0" "$@"`}

func tracefsMounts(t *testing.T, pid string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, " - tracefs ") {
			n++
		}
	}
	return n
}

// On a node where nothing mounted tracefs, the agent mounts it in a mount
// namespace of its own (the node's mount table does not change), becomes
// ready and ends a hung process at its deadline.
func TestStartsWithoutTracefs(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(rule("ovt-notrace", "2s", "1s", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	before := tracefsMounts(t, "self")
	a := launchAgent(t, noTracefs, cfg)
	a.waitReady()
	pid := a.cmd.Process.Pid
	if len(a.logLines("tracefs was not mounted: mounted it in the agent's own mount namespace")) != 1 {
		t.Fatalf("no log line of the tracefs mount:\n%s", a.Log())
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	agentNS, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns/mnt"))
	if agentNS == "" || agentNS == self {
		t.Fatalf("agent mount namespace %q, the test's %q: want one of its own", agentNS, self)
	}
	if n := tracefsMounts(t, strconv.Itoa(pid)); n != 1 {
		t.Fatalf("agent's mount namespace has %d tracefs mounts, want 1", n)
	}
	if after := tracefsMounts(t, "self"); after != before {
		t.Fatalf("the node's mount table changed: %d tracefs mounts before, %d after", before, after)
	}

	p := cg.start(t, dir, engine(t, dir, "ovt-notrace", "sleep 1000"))
	eventually(t, 10*time.Second, "the hung process tracked", func() bool { _, ok := a.process(p.pid); return ok })
	if !p.waitDone(10 * time.Second) {
		t.Fatal("the hung process still alive 10s after its 2s deadline")
	}
}

// Without CAP_SYS_ADMIN the agent cannot mount tracefs: it exits 1 with an
// error naming the mount and the command that fixes it.
func TestNoTracefsWithoutCapSysAdmin(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(rule("ovt-notrace", "2s", "1s", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := append(append([]string{}, noTracefs...), tool(t, "setpriv"), "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin")
	a := launchAgent(t, wrapper, cfg)
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("agent still running without tracefs and CAP_SYS_ADMIN:\n%s", a.Log())
	}
	logs := a.Log()
	if a.ExitCode() != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", a.ExitCode(), logs)
	}
	for _, want := range []string{"tracefs is not mounted at /sys/kernel/tracing", "mount -t tracefs tracefs /sys/kernel/tracing"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("error does not say %q:\n%s", want, logs)
		}
	}
}
