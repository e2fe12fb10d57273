package collector

import (
	"bufio"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"overtime/bpf"
	"overtime/internal/node"
)

// Two children of one parent share one pidfd; an unwatched child is not
// reported; when the parent exits the watched child is reported orphaned
// and the watch is gone.
func TestWatchParent(t *testing.T) {
	h := newSource(t, bpf.Options{})
	parent := exec.Command("/bin/sh", "-c", `sleep 1000 & echo $!; sleep 1000 & echo $!; read x; exit 0`)
	stdin, err := parent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var kids []int
	for len(kids) < 2 && sc.Scan() {
		pid, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, pid)
	}
	t.Cleanup(func() {
		for _, k := range kids {
			_ = syscall.Kill(k, syscall.SIGKILL)
		}
		stdin.Close()
		_ = parent.Wait()
	})
	if len(kids) != 2 {
		t.Fatalf("children: %v", kids)
	}
	for _, k := range kids {
		if err := h.src.WatchParent(k, parent.Process.Pid); err != nil {
			t.Fatal(err)
		}
	}
	if p, c := h.src.pw.watching(); p != 1 || c != 2 {
		t.Fatalf("watching %d parents, %d children; want one pidfd for both", p, c)
	}
	if err := h.src.Untrack(kids[1]); err != nil {
		t.Fatal(err)
	}
	if p, c := h.src.pw.watching(); p != 1 || c != 1 {
		t.Fatalf("after unwatching one: %d parents, %d children", p, c)
	}
	stdin.Close() // the parent's read returns: it exits, its children run on
	if err := parent.Wait(); err != nil {
		t.Fatal(err)
	}
	h.wait(t, "orphan", func(e *node.Event) bool {
		return e.Type == node.EventOrphan && e.PID == kids[0] && e.PPID == parent.Process.Pid
	})
	time.Sleep(100 * time.Millisecond)
	h.drainNow()
	for _, e := range h.got {
		if e.Type == node.EventOrphan && e.PID == kids[1] {
			t.Fatal("an unwatched child was reported")
		}
	}
	if p, c := h.src.pw.watching(); p != 0 || c != 0 {
		t.Fatalf("after the parent exited: %d parents, %d children watched", p, c)
	}
	// Its parent is gone already: reported at once.
	if err := h.src.WatchParent(kids[1], parent.Process.Pid); err != nil {
		t.Fatal(err)
	}
	h.wait(t, "orphan at watch", func(e *node.Event) bool { return e.Type == node.EventOrphan && e.PID == kids[1] })
}

// drainNow moves the events already delivered into h.got.
func (h *srcHarness) drainNow() {
	for {
		select {
		case e, ok := <-h.ch:
			if !ok {
				return
			}
			h.got = append(h.got, e)
		default:
			return
		}
	}
}
