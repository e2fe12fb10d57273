package collector

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"overtime/internal/node"
)

// Sample reads real counters: a process that writes through a pipe moves
// its wchar on; one that computes moves its CPU on; one blocked reading an
// empty FIFO moves neither. A member with the wrong start time is left out.
func TestSampleRealProcesses(t *testing.T) {
	p, err := NewProcfs("/proc", false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fifo := dir + "/fifo"
	if err := exec.Command("mkfifo", fifo).Run(); err != nil {
		t.Fatal(err)
	}
	start := func(script string) (*exec.Cmd, node.Member) {
		t.Helper()
		cmd := exec.Command("/bin/sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		pr, err := p.Process(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, node.Member{PID: pr.PID, Born: pr.Born}
	}
	_, writer := start("while :; do echo x; done >/dev/null")
	_, computer := start("i=0; while :; do i=$((i+1)); done")
	// sh opens the FIFO for reading: it blocks in open until a writer comes.
	_, blocked := start("exec cat " + fifo)
	gone := node.Member{PID: writer.PID, Born: writer.Born + time.Second}
	// The agent knows a start time to the nanosecond (the kernel's fork
	// time); /proc shows it in clock ticks.
	writer.Born += 7 * time.Millisecond

	// Once cat runs and sleeps in open, the reader moves nothing.
	for until := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pr, err := p.Process(blocked.PID)
		b, _ := p.Diagnose(blocked.PID, blocked.Born)
		if err == nil && pr.Comm == "cat" && b.State == "S" {
			break
		}
		if time.Now().After(until) {
			t.Fatalf("the reader never blocked: %+v %+v", pr, b)
		}
	}
	first := byPID(p.Sample([]node.Member{writer, computer, blocked, gone}))
	if len(first) != 3 {
		t.Fatalf("sampled %d members, want 3 (the one with a wrong start time left out): %+v", len(first), first)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := byPID(p.Sample([]node.Member{writer, computer, blocked}))
		w, c := now[writer.PID], now[computer.PID]
		if w.IO > first[writer.PID].IO && c.CPU >= first[computer.PID].CPU+50*time.Millisecond {
			if b := now[blocked.PID]; b.IO != first[blocked.PID].IO || b.CPU > first[blocked.PID].CPU+10*time.Millisecond {
				t.Fatalf("the blocked reader moved: %+v then %+v", first[blocked.PID], b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress seen in 10 s: first %+v now %+v", first, now)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func byPID(us []node.Usage) map[int]node.Usage {
	m := map[int]node.Usage{}
	for _, u := range us {
		m[u.PID] = u
	}
	return m
}

// Diagnose reads a real sleeping process: its state, wchan and, on a
// filesystem that is not remote, no mount.
func TestDiagnoseRealProcess(t *testing.T) {
	p, err := NewProcfs("/proc", false)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pr, err := p.Process(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var b node.Blocked
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, err = p.Diagnose(pr.PID, pr.Born); err != nil {
			t.Fatal(err)
		}
		if (b.State == "S" && b.Wchan != "") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b.State != "S" || b.Wchan == "" || b.MountPoint != "" {
		t.Fatalf("diagnosis of a sleeping process = %+v", b)
	}
	if os.Geteuid() == 0 && len(b.Stack) == 0 {
		t.Fatalf("no kernel stack read as root: %+v", b)
	}
	if _, err := p.Diagnose(pr.PID, pr.Born+time.Second); err == nil {
		t.Fatal("a wrong start time was diagnosed")
	}
}

func TestIsRemoteFS(t *testing.T) {
	for fs, want := range map[string]bool{"nfs4": true, "fuse.sshfs": true, "fuse": true, "cifs": true, "ext4": false, "tmpfs": false, "overlay": false} {
		if got := isRemoteFS(fs); got != want {
			t.Errorf("isRemoteFS(%q) = %v", fs, got)
		}
	}
}
