package e2e

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"overtime/internal/procstat"
)

// The pile-up of Longhorn issue #12896, reproduced: a "manager" that every
// 100 ms runs the engine binary as `longhorn backup inspect ...`, each of
// which hangs, and never reaps any of them. Without overtime the live
// engines grow without bound; with overtime running the Longhorn default
// profile (timeouts shortened by config, max_running set), the live ones
// stay at or under the cap, each hung one ends at its deadline, and the
// zombies the manager leaves are counted with that manager as their parent.

// hang: note its PID in $OVT_STARTED as its first act (so a process that
// was stopped at exec and killed never shows up there), then hang.
//
//go:embed testdata/hang.c
var hangC string

// manager: spawn argv[2..] every argv[1] ms, never wait for any child.
//
//go:embed testdata/manager.c
var managerC string

func compileC(t *testing.T, dir, name, src string) string {
	t.Helper()
	if pre := os.Getenv(PrebuiltEnv); pre != "" {
		// Compiled ahead (static) from testdata/NAME.c by the VM runner.
		b, err := os.ReadFile(filepath.Join(pre, name))
		if err != nil {
			t.Fatalf("prebuilt %s: %v", name, err)
		}
		out := filepath.Join(dir, name)
		if err := os.WriteFile(out, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return out
	}
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	if b, err := exec.Command("cc", "-O2", "-o", out, c).CombinedOutput(); err != nil {
		t.Fatalf("cc %s: %v\n%s", name, err, b)
	}
	return out
}

// liveEngines counts processes named longhorn whose binary is under dir,
// running or sleeping (not zombies, not stopped).
func liveEngines(t *testing.T, engine string) (live, zombies int) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		st, err := procstat.ParseStat(stat)
		if err != nil || string(st.Comm) != "longhorn" {
			continue
		}
		switch st.State {
		case 'Z':
			zombies++
			continue
		case 'R', 'S', 'D':
		default:
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == engine {
			live++
		}
	}
	return live, zombies
}

// ranAndAlive counts the PIDs noted in file whose process is alive (not a
// zombie).
func ranAndAlive(t *testing.T, file string) int {
	n := 0
	for _, pid := range readPids(file) {
		if pidAlive(pid) {
			n++
		}
	}
	return n
}

func TestLonghornPileUp(t *testing.T) {
	dir := t.TempDir()
	binDir := filepath.Join(dir, "var/lib/longhorn/engine-binaries/longhornio-longhorn-engine-v1.6.2")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	engineBin := compileC(t, dir, "hang", hangC)
	if err := os.Rename(engineBin, filepath.Join(binDir, "longhorn")); err != nil {
		t.Fatal(err)
	}
	engineBin = filepath.Join(binDir, "longhorn")
	manager := compileC(t, dir, "manager", managerC)
	// The whole story runs on one clock, stretched by the time scale: the
	// manager's period (each engine's exec, hold, confinement and cap
	// are CPU work for the node and the agent), the waits, the rule's
	// timeout and grace, the window watched. The counts asserted are
	// those of the same story at any scale.
	period := scaled(100 * time.Millisecond)
	// The manager's command line; each run notes its engines in its own file.
	args := func(started string) string {
		return fmt.Sprintf("env OVT_STARTED=%s %s %d %s backup inspect 's3://backupbucket@us-east-1/?backup=backup-1&volume=pvc-1'", started, manager, period.Milliseconds(), engineBin)
	}

	// Without overtime: the pile-up grows without bound.
	cgA := newTestCgroup(t)
	mA := cgA.start(t, dir, args(filepath.Join(dir, "started-a")))
	time.Sleep(scaled(3 * time.Second))
	withoutLive, withoutZombies := liveEngines(t, engineBin)
	cgA.kill(cgA.dir)
	mA.waitDone(scaled(5 * time.Second))
	eventually(t, scaled(15*time.Second), "manager A's engines gone", func() bool { l, _ := liveEngines(t, engineBin); return l == 0 })
	t.Logf("without overtime, after %v: %d live longhorn engines, %d zombies", scaled(3*time.Second), withoutLive, withoutZombies)
	if withoutLive < 20 {
		t.Fatalf("the reproduction did not pile up: %d live after %v", withoutLive, scaled(3*time.Second))
	}

	// With overtime: the embedded Longhorn profile, timeout shortened, a cap.
	defaults, err := exec.Command(binary, "defaults").Output()
	if err != nil {
		t.Fatal(err)
	}
	timeout, grace := scaled(2*time.Second), scaled(time.Second)
	cfg := strings.Replace(string(defaults), "    timeout: 2m\n    max_running: 0\n", fmt.Sprintf("    timeout: %v\n    max_running: 5\n", timeout), 1)
	cfg = strings.Replace(cfg, "      grace: 10s\n", fmt.Sprintf("      grace: %v\n", grace), 1)
	if cfg == string(defaults) || !strings.Contains(cfg, "max_running: 5") {
		t.Fatal("could not shorten the longhorn rule of the defaults")
	}
	cgB := newTestCgroup(t) // before the agent: removed after it stops
	a := startAgent(t, cfg)
	started := filepath.Join(dir, "started-b")
	mB := cgB.start(t, dir, args(started))
	// Count the engines that ran (they noted their PID) and are alive: a
	// process being killed at its cap passes through the running state
	// on its way out, but it never ran the engine.
	maxLive := 0
	window := scaled(8 * time.Second)
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		if l := ranAndAlive(t, started); l > maxLive {
			maxLive = l
		}
		time.Sleep(50 * time.Millisecond)
	}
	withLive, withZombies := liveEngines(t, engineBin)
	t.Logf("with overtime (cap 5, timeout %v), over %v: at most %d live engines; at the end %d live, %d zombies", timeout, window, maxLive, withLive, withZombies)
	if maxLive > 5 {
		t.Fatalf("live engines reached %d, over the cap of 5", maxLive)
	}
	if v := a.metric(`overtime_capped_total{rule="longhorn"}`); v < 10 {
		t.Fatalf("capped_total = %v, want many", v)
	}
	if v := a.metric(`overtime_timeouts_total{rule="longhorn"}`); v < 2 {
		t.Fatalf("timeouts_total = %v: hung engines not ended at their deadline", v)
	}
	eventually(t, scaled(15*time.Second), "zombies counted", func() bool {
		return a.metric(`overtime_zombie_processes{rule="longhorn"}`) >= 10
	})
	zombieSeen := false
	for _, p := range a.processes() {
		if p.State == "zombie" {
			zombieSeen = true
		}
	}
	if !zombieSeen {
		t.Fatal("no zombie in the API")
	}
	var parent any
	for _, l := range a.logLines("zombie") {
		parent = l["parent"]
	}
	if parent != float64(mB.pid) {
		t.Fatalf("zombie log names parent %v, want the manager %d", parent, mB.pid)
	}
}
