package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// In monitor mode a matching process past its deadline shows up as overdue
// in the metrics, in the _info series with its pid, in the API with its
// open and created files, and in `overtime ps`, and stays alive. The same
// process under an agent in enforce mode ends and the series move.
func TestMonitorThenEnforce(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	const cfg = `
rules:
  - name: ovt-watch
    match: {comm: [ovt-watch]}
    timeout: 2s
    kill: {signal: SIGTERM, grace: 1s}
    cleanup: {when: [killed], paths: ["%s/made-*"]}
`
	config := fmt.Sprintf(cfg, dir)
	mon := startAgent(t, config, "--mode", "monitor")
	held := filepath.Join(dir, "held.dat")
	if err := os.WriteFile(held, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	eng := engine(t, dir, "ovt-watch", fmt.Sprintf("exec 3<%s\n: > %s/made-1\nsleep 1000 &\nwait", held, dir))
	p := cg.start(t, dir, eng)

	eventually(t, 10*time.Second, "overdue in the metrics", func() bool {
		return mon.metric(`overtime_overdue_processes{rule="ovt-watch"}`) == 2
	})
	info := fmt.Sprintf(`overtime_overdue_process_info{comm="ovt-watch",container_id="",pid="%d",pod_uid="",rule="ovt-watch"}`, p.pid)
	if v := mon.metric(info); v != 1 {
		t.Fatalf("%s = %v, want 1\n%s", info, v, mon.metricsText())
	}
	time.Sleep(1500 * time.Millisecond) // past deadline + grace
	if !p.alive() {
		t.Fatal("monitor mode killed the process")
	}
	root, _ := mon.process(p.pid)
	if root.State != "overdue" || !contains(root.OpenFiles, held) || !contains(root.CreatedFiles, filepath.Join(dir, "made-1")) {
		t.Fatalf("API: state %q open %v created %v", root.State, root.OpenFiles, root.CreatedFiles)
	}
	if v := mon.metric(`overtime_kills_total{result="skipped_monitor",rule="ovt-watch",signal="SIGKILL"}`); v != 1 {
		t.Fatalf("kills_total{skipped_monitor,SIGKILL} = %v", v)
	}

	// overtime ps, as a user would run it: table, wide and json.
	out := runPs(t, mon.addr)
	if !strings.Contains(out, "PID") || !strings.Contains(out, fmt.Sprint(p.pid)) || !strings.Contains(out, "overdue") {
		t.Fatalf("overtime ps:\n%s", out)
	}
	wide := runPs(t, mon.addr, "-o", "wide")
	if !strings.Contains(wide, "CGROUP") || !strings.Contains(wide, cg.path) {
		t.Fatalf("overtime ps -o wide:\n%s", wide)
	}
	var list []apiProcess
	if err := json.Unmarshal([]byte(runPs(t, mon.addr, "-o", "json")), &list); err != nil || len(list) != 2 {
		t.Fatalf("overtime ps -o json: %v %d", err, len(list))
	}
	mon.stop()

	// The same process, now under an agent in enforce mode: it is ended.
	enf := startAgent(t, config)
	if !p.waitDone(10 * time.Second) {
		t.Fatal("enforce mode did not end the overdue process")
	}
	eventually(t, 15*time.Second, "series back to zero", func() bool {
		return enf.metric(`overtime_overdue_processes{rule="ovt-watch"}`) == 0 && enf.metric(info) == -1
	})
	if v := enf.metric(`overtime_timeouts_total{rule="ovt-watch"}`); v != 1 {
		t.Fatalf("timeouts_total = %v", v)
	}
}

// A tracked engine whose parent (the caller) exits while it runs on is an
// orphan: flagged in the API and counted.
func TestOrphan(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-orphan", "1h", "1s", ""))
	eng := engine(t, dir, "ovt-orphan", "exec sleep 1000")
	caller := engine(t, dir, "caller", fmt.Sprintf("%s &\necho $! > %s/child\nsleep 1", eng, dir))
	c := cg.start(t, dir, caller)
	var child int
	eventually(t, 15*time.Second, "engine tracked", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "child"))
		fmt.Sscan(string(b), &child)
		_, ok := a.process(child)
		return child > 0 && ok
	})
	t.Cleanup(func() { _ = exec.Command("kill", "-9", fmt.Sprint(child)).Run() })
	if p, _ := a.process(child); p.Orphaned {
		t.Fatal("orphaned while its caller lives")
	}
	if v := a.metric(`overtime_orphaned_processes{rule="ovt-orphan"}`); v != 0 {
		t.Fatalf("orphaned gauge = %v before the caller exits", v)
	}
	if !c.waitDone(5 * time.Second) {
		t.Fatal("caller did not exit")
	}
	eventually(t, 15*time.Second, "orphan flagged", func() bool {
		p, _ := a.process(child)
		return p.Orphaned && a.metric(`overtime_orphaned_processes{rule="ovt-orphan"}`) == 1
	})
	if lines := a.logLines("orphaned"); len(lines) != 1 || lines[0]["pid"] != float64(child) {
		t.Fatalf("orphan log lines: %v", lines)
	}
}

func runPs(t *testing.T, addr string, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"ps", "--addr", addr}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("overtime ps %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// overtime ps exits 1 with a clear message when no agent answers.
func TestPsUnreachable(t *testing.T) {
	out, err := exec.Command(binary, "ps", "--addr", freeAddr(t)).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "cannot reach the agent") {
		t.Fatalf("ps against nothing: %v %s", err, out)
	}
}
