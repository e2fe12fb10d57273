package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A tree that forks without pause dies whole: no descendant escapes.
func TestForkingTreeDiesWhole(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-forker", "2s", "500ms", ""))
	// Each generation forks a child that forks again, and every shell
	// ignores TERM: only the cgroup kill ends it.
	eng := engine(t, dir, "ovt-forker", "trap '' TERM\nwhile :; do (trap '' TERM; sleep 1000) & sleep 0.01; done")
	p := cg.start(t, dir, eng)
	eventually(t, scaled(15*time.Second), "tree tracked", func() bool { _, ok := a.process(p.pid); return ok })
	if !p.waitDone(scaled(10 * time.Second)) {
		t.Fatal("forking tree not ended")
	}
	eventually(t, scaled(15*time.Second), "no process of the tree left", func() bool {
		return len(pidsOf(t, cg.dir)) == 0 && len(cg.children(t)) == 0
	})
	eventually(t, scaled(30*time.Second), "nothing alive in the table", func() bool { return liveTracked(a) == 0 })
	// Nothing it forked lives on anywhere: every sleep 1000 forked in the
	// test dir is gone.
	if n := countProcsIn(dir); n != 0 {
		t.Fatalf("%d processes of the tree escaped", n)
	}
}

// A stopped (SIGSTOP) tree is still ended.
func TestStoppedTreeEnds(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-stopped", "2s", "500ms", ""))
	eng := engine(t, dir, "ovt-stopped", "sleep 1000 &\nkill -STOP $!\nkill -STOP $$\nwait")
	p := cg.start(t, dir, eng)
	eventually(t, scaled(15*time.Second), "tree tracked", func() bool { return len(a.processes()) == 2 })
	if !p.waitDone(scaled(10 * time.Second)) {
		t.Fatal("stopped tree not ended")
	}
	eventually(t, scaled(15*time.Second), "tree gone", func() bool { return len(pidsOf(t, cg.dir)) == 0 && liveTracked(a) == 0 })
}

// SIGHUP re-reads the config; a bad file keeps the rules in force and says
// why; a good one applies to new processes.
func TestReloadOnSIGHUP(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(rule("ovt-one", "1h", "1s", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgentFile(t, cfgPath)
	// A bad file: kept out, with the problem in the log.
	if err := os.WriteFile(cfgPath, []byte("rules:\n  - name: ovt-two\n    match: {comm: [ovt-two]}\n    timeout: soon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, scaled(15*time.Second), "bad reload reported", func() bool {
		lines := a.logLines("config not reloaded")
		return len(lines) == 1 && strings.Contains(fmt.Sprint(lines[0]["err"]), "rules[0].timeout")
	})
	one := cg.start(t, dir, engine(t, dir, "ovt-one", "exec sleep 1000"))
	_ = one
	eventually(t, scaled(15*time.Second), "old rule still in force", func() bool { return len(a.processes()) == 1 })

	// A good file: the new rule matches new processes.
	if err := os.WriteFile(cfgPath, []byte(rule("ovt-two", "1h", "1s", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, scaled(15*time.Second), "reloaded", func() bool { return len(a.logLines("config reloaded")) == 1 })
	two := cg.start(t, dir, engine(t, dir, "ovt-two", "trap 'exit 0' TERM\nsleep 1000 & wait"))
	eventually(t, scaled(15*time.Second), "new rule matches", func() bool {
		p, ok := a.process(two.pid)
		return ok && p.Rule == "ovt-two"
	})
}

// The HTTP API is read-only and the agent binds loopback by default.
func TestHTTPReadOnly(t *testing.T) {
	a := startAgent(t, rule("ovt-http", "1h", "1s", ""))
	for _, path := range []string{"/api/v1/processes", "/api/v1/actions", "/metrics", "/healthz"} {
		resp, err := http.Post("http://"+a.addr+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s = %d, want 405", path, resp.StatusCode)
		}
	}
	resp, err := http.Get("http://" + a.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", err, resp)
	}
	resp.Body.Close()
	out, err := os.ReadFile("../../agent/defaults.yaml")
	if err != nil || !strings.Contains(string(out), "listen: 127.0.0.1:9477") {
		t.Fatalf("the embedded defaults do not bind loopback: %v", err)
	}
}

// countProcsIn counts live processes whose cwd is dir.
func countProcsIn(dir string) int {
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == dir {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err == nil && pidAlive(pid) {
				n++
			}
		}
	}
	return n
}

// Lost events: with a ring buffer of one page and a burst of execs, the
// kernel drops records; the agent counts them, rescans procfs and still
// tracks every matching process that lives on, each with the program it
// runs now (a child whose exec of sleep was lost is not left with its
// parent's name), and ends none of them on the way.
func TestLostEventsResync(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, rule("ovt-burst", "1h", "1s", ""), "--ring-buffer-size", "4096")
	eng := engine(t, dir, "ovt-burst", "sleep 1000 &\nwait")
	// 200 long-lived matching processes started at once, each forking a
	// child, each with a 900-byte argument (an exec record carries argv at
	// its length: three fit in the page): far more than one page holds.
	cg.start(t, dir, fmt.Sprintf(`/bin/sh -c 'a=$(printf %%0900d 0); i=0; while [ $i -lt 200 ]; do %s "$a" & i=$((i+1)); done; wait'`, eng))
	eventually(t, scaled(20*time.Second), "events lost and a resync made", func() bool {
		return a.metric("overtime_events_lost_total") > 0 && a.metric("overtime_resyncs_total") > 0
	})
	// Every one of the 200 and its child is tracked, whatever was lost.
	// The 400 processes all run before the agent's last resync reads
	// them, so the table settles on exactly this, every run.
	eventuallyState(t, scaled(20*time.Second), "all 200 trees tracked, each root ovt-burst with one child sleep", func() (bool, string) {
		roots, kids := 0, 0
		comms := map[string]int{}
		byPID := map[int]apiProcess{}
		ps := a.processes()
		for _, p := range ps {
			byPID[p.PID] = p
		}
		for _, p := range ps {
			comms[p.Comm]++
			if p.Rule != "ovt-burst" {
				continue
			}
			if _, child := byPID[p.PPID]; child {
				kids++
				if p.Comm != "sleep" {
					continue
				}
			} else {
				roots++
			}
		}
		ok := roots == 200 && kids == 200 && comms["ovt-burst"] == 200 && comms["sleep"] == 200
		return ok, fmt.Sprintf("%d processes: %d roots, %d children; by comm %v", len(ps), roots, kids, comms)
	})
	// Nothing was ended or rebuilt: every tree kept its cgroup.
	if n := len(a.logLines("tree ended")); n != 0 {
		t.Fatalf("%d trees ended though all their processes run", n)
	}
	if n := len(a.logLines("adopted tree")); n != 0 {
		t.Fatalf("%d trees rebuilt from their cgroups at a resync", n)
	}
}
