package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"overtime/internal/node"
)

func (h *harness) file(pid int, op node.FileOp, path, newPath string, ino uint64) {
	h.send(node.Event{Type: node.EventFile, PID: pid,
		File: &node.FileEvent{Op: op, Path: path, NewPath: newPath, Dev: 1, Ino: ino}})
}

func removed(calls []string) []string {
	var out []string
	for _, c := range calls {
		if p, ok := strings.CutPrefix(c, "remove "); ok {
			out = append(out, p)
		}
	}
	return out
}

func TestCleanupRemovesOnlyCreatedMatchingDeepestFirst(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.fork(101, 100, time.Second)
	h.file(100, node.FileMkdir, "/repo/locks", "", 1)
	h.file(100, node.FileCreate, "/repo/locks/tmp-1", "", 2)
	h.file(100, node.FileRename, "/repo/locks/tmp-1", "/repo/locks/abc", 0) // temp renamed to its final name
	h.file(101, node.FileCreate, "/repo/locks/def", "", 3)
	h.file(101, node.FileCreate, "/repo/locks/gone", "", 4)
	h.file(101, node.FileUnlink, "/repo/locks/gone", "", 0) // removed by the tree itself
	h.file(100, node.FileCreate, "/repo/data/pack", "", 5)  // outside paths
	h.file(100, node.FileOpen, "/repo/locks/old", "", 6)    // existed before: not created
	h.file(100, node.FileCreate, "/tmp/restic-temp", "", 7)

	procs := h.a.Processes()
	if got := procs[0].CreatedFiles; !slices.Equal(got, []string{"/repo/data/pack", "/repo/locks", "/repo/locks/abc", "/tmp/restic-temp"}) {
		t.Fatalf("created files of 100 = %v", got)
	}
	h.at(5 * time.Minute)
	h.exit(101, 5*time.Minute+time.Second, 15<<8)
	h.exit(100, 5*time.Minute+time.Second, 15)
	got := removed(h.enf.callList())
	want := []string{"/repo/locks/def dry=false", "/repo/locks/abc dry=false", "/tmp/restic-temp dry=false"}
	if !slices.Equal(got, want) {
		t.Fatalf("removed %v, want %v", got, want)
	}
	if v := testutil.ToFloat64(h.a.m.cleanupSkipped.WithLabelValues("restic", "outside_paths")); v != 2 {
		// /repo/data/pack and /repo/locks (a directory the glob does not name)
		t.Fatalf("outside_paths skips = %v, want 2", v)
	}
	if v := testutil.ToFloat64(h.a.m.cleanupSkipped.WithLabelValues("restic", "not_created")); v != 1 {
		t.Fatalf("not_created skips = %v, want 1", v)
	}
	if v := testutil.ToFloat64(h.a.m.removedFiles.WithLabelValues("restic")); v != 3 {
		t.Fatalf("removed files = %v", v)
	}
	if v := testutil.ToFloat64(h.a.m.removedBytes.WithLabelValues("restic")); v != 30 {
		t.Fatalf("removed bytes = %v", v)
	}
}

// Cleanups run on a thread of their own at a lower priority than the
// processes being killed beside them.
func TestCleanupRunsNice(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	nice := -100
	h.enf.removeFn = func(path string) (int64, string, error) {
		// getpriority returns 20 - nice for a thread (the raw system call).
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		if err != nil {
			t.Errorf("getpriority: %v", err)
		}
		nice = 20 - prio
		return 1, "", nil
	}
	h.exec(100, 1, 0, "restic", "backup")
	h.file(100, node.FileCreate, "/tmp/restic-temp", "", 7)
	h.at(5 * time.Minute)
	h.exit(100, 5*time.Minute+time.Second, 15)
	if got := removed(h.enf.callList()); len(got) != 1 {
		t.Fatalf("removed %v, want the temp file", got)
	}
	if nice != cleanupNice {
		t.Fatalf("the cleanup ran at nice %d, want %d", nice, cleanupNice)
	}
	if prio, _ := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()); 20-prio != 0 {
		t.Fatalf("the test's own thread is at nice %d: the cleanup's niceness leaked", 20-prio)
	}
}

func TestCleanupOnlyWhenRuleSaysSo(t *testing.T) {
	h := newHarness(t, resticRule) // when: [killed]
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.file(100, node.FileCreate, "/repo/locks/abc", "", 2)
	h.exit(100, time.Second, 1<<8) // failed on its own: not killed
	if got := removed(h.enf.callList()); len(got) != 0 {
		t.Fatalf("cleanup ran for a tree that was not killed: %v", got)
	}
	for _, c := range []struct {
		when    []string
		outcome string
		want    bool
	}{
		{[]string{"killed"}, "killed", true},
		{[]string{"killed"}, "failed", false},
		{[]string{"failed"}, "failed", true},
		{[]string{"failed"}, "killed", true},
		{[]string{"failed"}, "exited", false},
		{[]string{"always"}, "exited", true},
	} {
		if got := cleanupApplies(c.when, c.outcome); got != c.want {
			t.Errorf("cleanupApplies(%v, %s) = %v", c.when, c.outcome, got)
		}
	}
}

func TestCleanupMonitorModeOnlyReports(t *testing.T) {
	h := newHarness(t, "mode: monitor\n"+strings.Replace(resticRule, "when: [killed]", "when: [always]", 1))
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.file(100, node.FileCreate, "/repo/locks/abc", "", 2)
	h.exit(100, time.Second, 0)
	if got := removed(h.enf.callList()); !slices.Equal(got, []string{"/repo/locks/abc dry=true"}) {
		t.Fatalf("monitor mode cleanup calls = %v, want one dry run", got)
	}
	if v := testutil.ToFloat64(h.a.m.removedFiles.WithLabelValues("restic")); v != 0 {
		t.Fatalf("monitor mode counted a removal")
	}
	if v := testutil.ToFloat64(h.a.m.cleanupSkipped.WithLabelValues("restic", "monitor")); v != 1 {
		t.Fatalf("would-be removals counted = %v, want 1", v)
	}
}

func TestCleanupSkipReasonsAndErrorsCounted(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.enf.removeFn = func(path string) (int64, string, error) {
		switch path {
		case "/repo/locks/a":
			return 0, "held_open", nil
		case "/repo/locks/b":
			return 0, "", errTest
		}
		return 0, "replaced", nil
	}
	h.exec(100, 1, 0, "restic", "backup")
	for i, p := range []string{"/repo/locks/a", "/repo/locks/b", "/repo/locks/c"} {
		h.file(100, node.FileCreate, p, "", uint64(i+1))
	}
	h.at(5*time.Minute + 10*time.Second)
	h.exit(100, 5*time.Minute+11*time.Second, 9)
	for reason, want := range map[string]float64{"held_open": 1, "replaced": 1} {
		if v := testutil.ToFloat64(h.a.m.cleanupSkipped.WithLabelValues("restic", reason)); v != want {
			t.Errorf("skipped{%s} = %v, want %v", reason, v, want)
		}
	}
	if v := testutil.ToFloat64(h.a.m.cleanupErrors.WithLabelValues("restic")); v != 1 {
		t.Errorf("cleanup errors = %v, want 1", v)
	}
}

func TestCreatedFilesBounded(t *testing.T) {
	h := newHarness(t, "limits: {max_created_files: 2}\n"+resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	for i, p := range []string{"/repo/locks/a", "/repo/locks/b", "/repo/locks/c"} {
		h.file(100, node.FileCreate, p, "", uint64(i+1))
	}
	if n := len(h.a.Processes()[0].CreatedFiles); n != 2 {
		t.Fatalf("kept %d created records, want the limit 2", n)
	}
	if v := testutil.ToFloat64(h.a.m.limitHits.WithLabelValues("max_created_files")); v != 1 {
		t.Fatalf("limit hits = %v", v)
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("remove failed")

func TestCreatedFilesOfGoneMembersShowUnderTheRoot(t *testing.T) {
	h := newHarness(t, resticRule)
	h.start()
	h.exec(100, 1, 0, "restic", "backup")
	h.fork(101, 100, time.Second)
	h.file(101, node.FileCreate, "/repo/locks/by-child", "", 2)
	h.file(100, node.FileCreate, "/repo/locks/by-root", "", 3)
	if p := h.a.Processes(); !slices.Equal(p[0].CreatedFiles, []string{"/repo/locks/by-root"}) || !slices.Equal(p[1].CreatedFiles, []string{"/repo/locks/by-child"}) {
		t.Fatalf("created files while both live: %v / %v", p[0].CreatedFiles, p[1].CreatedFiles)
	}
	h.exit(101, 2*time.Second, 0)
	h.reap(101, 2*time.Second)
	if p := h.a.Processes(); !slices.Equal(p[0].CreatedFiles, []string{"/repo/locks/by-child", "/repo/locks/by-root"}) {
		t.Fatalf("root's created files after the child is gone: %v", p[0].CreatedFiles)
	}
}
