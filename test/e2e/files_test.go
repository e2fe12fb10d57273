package e2e

// Issue 3: what cleanup removes after a kill, and what it never touches,
// against the real kernel (eBPF provenance records, openat2 in the tree's
// own mount namespace, write leases) and the real engines restic and borg.

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// launched is a process started by launch.
type launched struct {
	*proc
	in  *os.File    // the write end of its stdin; nil once closed
	out *syncBuffer // its stdout and stderr
}

// launch runs argv inside cg like cg.start (the shell moves itself into the
// cgroup, then execs argv, so the PID is argv's), with extra environment.
// Its standard input is a pipe whose write end the test holds, so it never
// ends until closeInput: a backup whose source hangs. Whatever is left of
// its process group is killed at the end of the test.
func (cg *testCgroup) launch(t *testing.T, dir string, env []string, argv ...string) *launched {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir}, argv...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	l := &launched{in: w, out: &syncBuffer{}}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, l.out, l.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(l.closeInput) // after watch's kill: cleanups run last first
	l.proc = watch(t, cmd)
	return l
}

func (l *launched) closeInput() {
	if l.in != nil {
		l.in.Close()
		l.in = nil
	}
}

// runTool runs argv to completion (at most 60s, scaled) in dir with extra
// environment and returns its combined output.
func runTool(t *testing.T, dir string, env []string, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(60*time.Second))
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRunTool(t *testing.T, dir string, env []string, argv ...string) string {
	t.Helper()
	out, err := runTool(t, dir, env, argv...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	return out
}

// counter is a counter series' value, 0 when it was never incremented.
func (a *agentProc) counter(series string) float64 {
	a.t.Helper()
	if v := a.metric(series); v >= 0 {
		return v
	}
	return 0
}

func writeText(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// wantContent fails unless path is a regular file (not through a symlink)
// holding content.
func wantContent(t *testing.T, path, content string) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("%s should still exist: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		t.Fatalf("%s is %v, want a regular file", path, st.Mode())
	}
	if b, _ := os.ReadFile(path); string(b) != content {
		t.Fatalf("%s holds %q, want %q", path, b, content)
	}
}

func wantGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s should be gone (lstat: %v)", path, err)
	}
}

// skips lists the cleanup skips of /api/v1/actions as "reason: path".
func (a *agentProc) skips() []string {
	a.t.Helper()
	var out []string
	for _, ac := range a.actions() {
		if ac.Action == "cleanup" && ac.Result == "skipped" {
			out = append(out, ac.Reason)
		}
	}
	slices.Sort(out)
	return out
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// After a kill, every file, directory, symlink and hard link the tree
// created under paths is removed, and nothing else: not a file that existed
// before and was appended to or truncated, not a created file outside
// paths, not a symlink's target, not a created file another process still
// holds open, not a created file replaced by another inode.
func TestCleanupRemovesOnlyWhatTheTreeCreated(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for _, d := range []string{in, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeText(t, filepath.Join(in, "appended"), "old\n")
	writeText(t, filepath.Join(in, "truncated"), "old\n")
	writeText(t, filepath.Join(in, "target"), "target\n")

	const name = "ovt-files"
	// The engine's work and the test's setup fit before the deadline
	// (scaled).
	timeout := scaled(8 * time.Second)
	a := startAgent(t, rule(name, timeout.String(), "1s", fmt.Sprintf("    cleanup:\n      paths: [%q]\n", in+"/**")))
	// Relative paths (resolved through the process's cwd), builtins of the
	// root and short-lived children (mkdir, ln, mv) that are gone before
	// their records are read.
	eng := engine(t, dir, name, fmt.Sprintf(`cd %[1]s
echo new > new.txt
mkdir dir
echo f > dir/f
ln -s %[1]s/target link
ln new.txt hard
echo tmp > tmpname
mv tmpname renamed
echo more >> appended
echo trunc > truncated
echo out > %[2]s/created
echo held > held
echo first > replaced
exec 3> log
echo ready > %[2]s/ready
sleep 1000 &
wait`, in, out))
	started := time.Now()
	p := cg.start(t, dir, eng)

	// While it runs: the root's created_files name what it created itself
	// and what its children that already exited created (mkdir, ln), never
	// what existed before; open_files shows the file it holds open.
	in1 := func(n string) string { return filepath.Join(in, n) }
	rootMade := []string{in1("new.txt"), in1("dir/f"), in1("renamed"), in1("held"), in1("replaced"), in1("log"),
		filepath.Join(out, "created"), filepath.Join(out, "ready"), in1("dir"), in1("link"), in1("hard")}
	var info apiProcess
	eventually(t, scaled(15*time.Second), "the root's created files in the API", func() bool {
		var ok bool
		info, ok = a.process(p.pid)
		return ok && containsAll(info.CreatedFiles, rootMade...)
	})
	for _, f := range []string{"appended", "truncated", "target", "tmpname"} {
		if slices.Contains(info.CreatedFiles, in1(f)) {
			t.Fatalf("created_files lists %s: %v", f, info.CreatedFiles)
		}
	}
	if !slices.Contains(info.OpenFiles, in1("log")) {
		t.Fatalf("open_files = %v, want %s among them", info.OpenFiles, in1("log"))
	}

	// Another process, outside the tree, holds "held" open (read-only);
	// another process (the test) replaces "replaced" with a new inode.
	f, err := os.Open(in1("held"))
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "1000")
	holder.Stdin = f
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	writeText(t, in1("replaced.new"), "second\n")
	if err := os.Rename(in1("replaced.new"), in1("replaced")); err != nil {
		t.Fatal(err)
	}
	if e := time.Since(started); e > timeout-scaled(time.Second) {
		t.Fatalf("setup took %v, too close to the %v deadline", e, timeout)
	}

	if !p.waitDone(scaled(15 * time.Second)) {
		t.Fatal("the tree was not ended")
	}
	if ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("root ended with %v, want SIGTERM", ws)
	}
	eventually(t, scaled(15*time.Second), "cleanup done", func() bool {
		return a.counter(`overtime_cleanup_removed_files_total{rule="ovt-files"}`) == 7 &&
			a.counter(`overtime_cleanup_skipped_total{reason="not_created",rule="ovt-files"}`) == 2
	})

	for _, n := range []string{"new.txt", "hard", "dir/f", "dir", "link", "renamed", "log", "tmpname"} {
		wantGone(t, in1(n))
	}
	wantContent(t, in1("appended"), "old\nmore\n")
	wantContent(t, in1("truncated"), "trunc\n")
	wantContent(t, in1("target"), "target\n")
	wantContent(t, in1("held"), "held\n")
	wantContent(t, in1("replaced"), "second\n")
	wantContent(t, filepath.Join(out, "created"), "out\n")
	wantContent(t, filepath.Join(out, "ready"), "ready\n")
	if got := listDir(t, in); !slices.Equal(got, []string{"appended", "held", "replaced", "target", "truncated"}) {
		t.Fatalf("left in %s: %v", in, got)
	}

	for reason, want := range map[string]float64{
		"not_created": 2, "held_open": 1, "replaced": 1, "outside_paths": 2,
		"not_empty": 0, "gone": 0, "no_namespace": 0, "unsupported": 0, "monitor": 0,
	} {
		if v := a.counter(fmt.Sprintf(`overtime_cleanup_skipped_total{reason=%q,rule="ovt-files"}`, reason)); v != want {
			t.Errorf("cleanup_skipped_total{%s} = %v, want %v", reason, v, want)
		}
	}
	// new.txt and hard (4 bytes each: two names of one inode), dir/f 2,
	// renamed 4, log 0; directories and links count no bytes.
	if v := a.counter(`overtime_cleanup_removed_bytes_total{rule="ovt-files"}`); v != 14 {
		t.Errorf("cleanup_removed_bytes_total = %v, want 14", v)
	}
	if v := a.counter(`overtime_cleanup_errors_total{rule="ovt-files"}`); v != 0 {
		t.Errorf("cleanup_errors_total = %v", v)
	}
	want := []string{
		"held_open: " + in1("held"),
		"not_created: " + in1("appended"),
		"not_created: " + in1("truncated"),
		"replaced: " + in1("replaced"),
	}
	if got := a.skips(); !slices.Equal(got, want) {
		t.Errorf("skip actions = %q, want %q", got, want)
	}
	eventually(t, scaled(15*time.Second), "tree cgroup removed", func() bool { return len(cg.children(t)) == 0 })
}

// A tree in a mount namespace of its own: the file it created on a tmpfs
// mounted only there is removed there, and the node's file of the same path
// is untouched. After the tree dies the namespace lives on only through the
// agent's held descriptors until cleanup; the test itself keeps an O_PATH
// descriptor of the tmpfs directory (not of the namespace) to look inside.
func TestCleanupInTheTreesMountNamespace(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	writeText(t, filepath.Join(mnt, "f"), "node\n")

	const name = "ovt-mntns"
	// The test looks into the namespace before the deadline (scaled).
	a := startAgent(t, rule(name, scaled(2*time.Second).String(), "1s", fmt.Sprintf("    cleanup:\n      paths: [%q]\n", mnt+"/*")))
	// The engine, not the shell before it, creates f: a file made before
	// the tracked exec is not the tree's.
	eng := engine(t, dir, name, fmt.Sprintf("echo ns > %s/f\nsleep 1000 &\nwait", mnt))
	p := cg.start(t, dir, fmt.Sprintf("unshare -m sh -c 'mount -t tmpfs none %s && exec %s'", mnt, eng))

	nsFile := fmt.Sprintf("/proc/%d/root%s/f", p.pid, mnt)
	eventually(t, scaled(15*time.Second), "the engine's file in its namespace, in created_files", func() bool {
		b, _ := os.ReadFile(nsFile)
		info, ok := a.process(p.pid)
		return string(b) == "ns\n" && ok && slices.Contains(info.CreatedFiles, mnt+"/f")
	})
	nsDir, err := unix.Open(filepath.Dir(nsFile), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(nsDir) })
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(nsDir, &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Fatalf("the namespace's %s is not the tmpfs (type %#x, %v)", mnt, sfs.Type, err)
	}
	// By device, not type: the node's /tmp may be a tmpfs too.
	var nsSt, nodeSt unix.Stat_t
	if err := unix.Fstat(nsDir, &nsSt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(mnt, &nodeSt); err != nil || nodeSt.Dev == nsSt.Dev {
		t.Fatalf("the tmpfs leaked into the node's mount namespace (device %#x, %v)", nodeSt.Dev, err)
	}

	if !p.waitDone(scaled(5 * time.Second)) {
		t.Fatal("the tree was not ended")
	}
	eventually(t, scaled(15*time.Second), "the namespace's file removed", func() bool {
		return a.counter(`overtime_cleanup_removed_files_total{rule="ovt-mntns"}`) == 1
	})
	var st unix.Stat_t
	if err := unix.Fstatat(nsDir, "f", &st, unix.AT_SYMLINK_NOFOLLOW); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("f in the tree's namespace: %v, want ENOENT", err)
	}
	wantContent(t, filepath.Join(mnt, "f"), "node\n")
	if got := a.skips(); len(got) != 0 {
		t.Fatalf("skips: %q", got)
	}
}

// resticEnv is the environment of every restic the tests run: a password,
// and cache and temp directories inside the test's own.
func resticEnv(t *testing.T, dir string) []string {
	t.Helper()
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{"RESTIC_PASSWORD=overtime-e2e", "RESTIC_CACHE_DIR=" + filepath.Join(dir, "cache"), "TMPDIR=" + tmp}
}

// resticCheckClean runs `restic check` on repo (no `restic unlock`
// before it) and fails unless it finds no errors.
func resticCheckClean(t *testing.T, dir string, env []string, repo string) {
	t.Helper()
	if out := mustRunTool(t, dir, env, "restic", "-r", repo, "check"); !strings.Contains(out, "no errors were found") {
		t.Fatalf("restic check %s:\n%s", repo, out)
	}
}

// waitLocks waits for n finished restic locks in dir. restic writes a lock
// under a temporary name and renames it to its ID (64 hex digits) when it
// is complete, so only names of that form count.
func waitLocks(t *testing.T, dir string, n int, d time.Duration) []string {
	t.Helper()
	var names []string
	eventually(t, d, fmt.Sprintf("%d locks in %s", n, dir), func() bool {
		names = names[:0]
		for _, name := range listDir(t, dir) {
			if isResticID(name) {
				names = append(names, name)
			}
		}
		return len(names) == n
	})
	return names
}

func isResticID(name string) bool {
	if len(name) != 64 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

// A hung `restic backup` killed at its deadline: its lock is removed and the
// next `restic check` passes without `restic unlock`; a stale lock of
// another restic run, which overtime did not see created, stays.
//
// What restic 0.14 does with locks (measured here): `check` takes an
// exclusive lock and refuses to start while ANY other lock exists,
// exclusive or not, even a stale one of a dead PID on this very host ("the
// `unlock` command can be used to remove stale locks") — it never removes
// stale locks by itself. `backup` takes a non-exclusive lock and runs
// beside other non-exclusive ones. restic 0.14 does not catch SIGTERM, so
// the rule's SIGTERM ends it without its own cleanup and the lock stays.
// A repository holding the stale lock can therefore never pass `check`
// without `unlock`, so the two halves use two repositories: repo-a holds
// the planted stale lock (and `check` there still fails, as it must: that
// lock is the operator's to judge), repo-b does not, and `check` there
// passes. Both backups run at once, each its own tree.
func TestResticLockRemovedAfterKill(t *testing.T) {
	tool(t, "restic")
	cg := newTestCgroup(t)
	dir := t.TempDir()
	env := resticEnv(t, dir)
	repoA := filepath.Join(dir, "repo-a") // absolute
	const repoB = "repo-b"                // relative to dir: resolved through restic's cwd
	errs := make(chan error, 2)
	for _, r := range []string{repoA, repoB} {
		go func() {
			out, err := runTool(t, dir, env, "restic", "init", "-q", "-r", r)
			if err != nil {
				err = fmt.Errorf("restic init %s: %v\n%s", r, err, out)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	locksA, locksB := filepath.Join(repoA, "locks"), filepath.Join(dir, repoB, "locks")

	// The stale lock: a real restic backup, killed with SIGKILL before the
	// agent starts, leaves its lock in repo-a. (It stays where restic put
	// it: a lock copied from another repository would not decrypt, and
	// restic refuses a lock it cannot read.)
	early := cg.launch(t, dir, env, "restic", "-r", repoA, "backup", "--stdin")
	planted := waitLocks(t, locksA, 1, scaled(15*time.Second))[0]
	_ = syscall.Kill(early.pid, syscall.SIGKILL)
	if !early.waitDone(scaled(5 * time.Second)) {
		t.Fatal("the early restic did not die")
	}
	plantedPath := filepath.Join(locksA, planted)
	plantedData, err := os.ReadFile(plantedPath)
	if err != nil {
		t.Fatal(err)
	}
	var plantedSt unix.Stat_t
	if err := unix.Lstat(plantedPath, &plantedSt); err != nil {
		t.Fatal(err)
	}

	// Both restics lock before the deadline (scaled: restic's start is
	// CPU-bound).
	timeout := scaled(10 * time.Second)
	a := startAgent(t, fmt.Sprintf(`
mode: enforce
rules:
  - name: restic
    match: {comm: [restic], args: [backup]}
    timeout: %v
    kill: {signal: SIGTERM, grace: 2s}
    cleanup:
      paths: ["**/locks/*"]
`, timeout))
	started := time.Now()
	pa := cg.launch(t, dir, env, "restic", "-r", repoA, "backup", "--stdin", "--stdin-filename", "a.dump")
	pb := cg.launch(t, dir, env, "restic", "-r", repoB, "backup", "--stdin", "--stdin-filename", "b.dump")
	namesA := waitLocks(t, locksA, 2, scaled(8*time.Second))
	ownB := waitLocks(t, locksB, 1, scaled(8*time.Second))[0]
	ownA := namesA[0]
	if ownA == planted {
		ownA = namesA[1]
	}
	if e := time.Since(started); e > timeout-scaled(2*time.Second) {
		t.Fatalf("restic took %v to lock, too close to the %v deadline", e, timeout)
	}
	// created_files: restic's own lock (made under a temp name with O_EXCL,
	// then renamed) and never the planted one.
	eventually(t, scaled(15*time.Second), "each restic's lock in its created_files", func() bool {
		ia, okA := a.process(pa.pid)
		ib, okB := a.process(pb.pid)
		return okA && okB && slices.Contains(ia.CreatedFiles, filepath.Join(locksA, ownA)) &&
			slices.Contains(ib.CreatedFiles, filepath.Join(locksB, ownB))
	})
	if ia, _ := a.process(pa.pid); slices.Contains(ia.CreatedFiles, plantedPath) || ia.Comm != "restic" {
		t.Fatalf("repo-a's restic as tracked: %+v", ia)
	}

	for _, p := range []*launched{pa, pb} {
		if !p.waitDone(scaled(20 * time.Second)) {
			t.Fatalf("restic %d not ended at its deadline", p.pid)
		}
		// restic 0.14 does not catch SIGTERM: it dies of it, lock left.
		if ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Fatalf("restic %d ended with %v, want SIGTERM\n%s", p.pid, ws, p.out.String())
		}
	}
	eventually(t, scaled(15*time.Second), "both locks removed", func() bool {
		return a.counter(`overtime_cleanup_removed_files_total{rule="restic"}`) == 2
	})
	if got := listDir(t, locksB); len(got) != 0 {
		t.Fatalf("repo-b locks left: %v", got)
	}
	if got := listDir(t, locksA); !slices.Equal(got, []string{planted}) {
		t.Fatalf("repo-a locks = %v, want only the planted %s", got, planted)
	}
	var st unix.Stat_t
	if err := unix.Lstat(plantedPath, &st); err != nil || st.Ino != plantedSt.Ino {
		t.Fatalf("the planted lock was replaced (inode %d, was %d; %v)", st.Ino, plantedSt.Ino, err)
	}
	if b, _ := os.ReadFile(plantedPath); !bytes.Equal(b, plantedData) {
		t.Fatal("the planted lock's content changed")
	}
	if got := a.skips(); len(got) != 0 {
		t.Fatalf("skips: %q", got)
	}

	// The next run on repo-b needs no `restic unlock`.
	resticCheckClean(t, dir, env, repoB)
	// On repo-a the planted stale lock still blocks check: restic's own
	// verdict that it is a lock, and one overtime rightly left alone.
	if out, err := runTool(t, dir, env, "restic", "-r", repoA, "check"); err == nil || !strings.Contains(out, "already locked") {
		t.Fatalf("restic check on repo-a with the planted lock: %v\n%s", err, out)
	}
}

// borgEnv is the environment of a borg the test runs, as if on the host
// (or in the pod) named host. Borg 1.2 takes a lock held by its own host ID
// whose PID is dead for stale and removes it itself; a lock of another
// host ID it must assume alive. Backup jobs on Kubernetes run in a new pod
// each time, with a new hostname, so the next run cannot judge the lock the
// killed one left: give the hung borg and the next one different host IDs,
// so that the next run succeeds only if overtime's cleanup did the work.
func borgEnv(t *testing.T, dir, host string) []string {
	t.Helper()
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	return []string{
		"TMPDIR=" + tmp,
		"BORG_BASE_DIR=" + filepath.Join(dir, "base"),
		"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
		"BORG_HOST_ID=" + host + "@1",
	}
}

// A hung `borg create` killed at its deadline: lock.exclusive (a directory
// borg makes under a temp name and renames, with one file inside) and
// lock.roster are removed, and the next `borg create` succeeds without
// `borg break-lock`.
//
// /usr/bin/borg is a python script; the kernel names the task after the
// script (bprm->filename), so its comm is "borg" and a comm rule matches.
// The rule sends SIGKILL at the deadline: on SIGTERM borg 1.2 raises an
// exception and releases its own locks (measured here), leaving nothing to
// clean; a borg hung in the kernel on a dead backend would not.
func TestBorgLockRemovedAfterKill(t *testing.T) {
	tool(t, "borg")
	cg := newTestCgroup(t)
	dir := t.TempDir()
	env, next := borgEnv(t, dir, "overtime-e2e-pod-a"), borgEnv(t, dir, "overtime-e2e-pod-b")
	repo := filepath.Join(dir, "repo")
	mustRunTool(t, dir, env, "borg", "init", "-e", "none", repo)

	// Control, before the agent runs: a killed borg's leftovers do block
	// the next create here.
	early := cg.launch(t, dir, env, "borg", "create", repo+"::early", "-")
	eventually(t, scaled(15*time.Second), "the early borg's lock", func() bool {
		_, err := os.Stat(filepath.Join(repo, "lock.roster"))
		return err == nil
	})
	_ = syscall.Kill(early.pid, syscall.SIGKILL)
	if !early.waitDone(scaled(5 * time.Second)) {
		t.Fatal("the early borg did not die")
	}
	if out, err := runTool(t, dir, next, "borg", "create", "--lock-wait", "1", repo+"::control", "/etc/hostname"); err == nil {
		t.Fatalf("control: borg create succeeded over a killed borg's lock:\n%s", out)
	}
	mustRunTool(t, dir, env, "borg", "break-lock", repo)

	a := startAgent(t, `
mode: enforce
rules:
  - name: borg
    match: {comm: [borg], args: [create]}
    timeout: 10s
    kill: {signal: SIGKILL}
    cleanup:
      paths: ["**/lock.exclusive", "**/lock.exclusive/*", "**/lock.roster", "**/lock.exclusive.*.tmp", "**/lock.exclusive.*.tmp/*"]
`)
	p := cg.launch(t, dir, env, "borg", "create", repo+"::a", "-")
	var lockFiles []string
	eventually(t, scaled(15*time.Second), "borg's locks, in its created_files", func() bool {
		lockFiles, _ = filepath.Glob(filepath.Join(repo, "lock.exclusive", "*"))
		info, ok := a.process(p.pid)
		return len(lockFiles) == 1 && ok && containsAll(info.CreatedFiles,
			filepath.Join(repo, "lock.exclusive"), lockFiles[0], filepath.Join(repo, "lock.roster"))
	})
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.pid)); string(b) != "borg\n" {
		t.Fatalf("borg's comm is %q", b)
	}
	if !p.waitDone(scaled(20 * time.Second)) {
		t.Fatal("borg not ended at its deadline")
	}
	if ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("borg ended with %v, want SIGKILL\n%s", ws, p.out.String())
	}
	// Borg locks its cache the same way (BORG_BASE_DIR/.cache/borg/<repo
	// id>/lock.exclusive and lock.roster, which `borg break-lock` also
	// breaks): the paths name those too. 3 in the repository, 3 in the
	// cache, and, when borg was killed between making a lock's temporary
	// directory (lock.exclusive.<random>.tmp) and renaming it into place,
	// that directory and what it holds.
	cacheLocks := filepath.Join(dir, "base", ".cache", "borg", "*", "lock.*")
	eventuallyState(t, scaled(15*time.Second), "borg's locks removed", func() (bool, string) {
		left, _ := filepath.Glob(filepath.Join(repo, "lock.*"))
		cache, _ := filepath.Glob(cacheLocks)
		left = append(left, cache...)
		return len(left) == 0, fmt.Sprintf("left: %v", left)
	})
	var removed []string
	eventuallyState(t, scaled(5*time.Second), "one removal counted per removal logged", func() (bool, string) {
		removed = removed[:0]
		for _, rec := range a.logLines("removed") {
			if path, _ := rec["path"].(string); rec["msg"] == "removed" && path != "" {
				removed = append(removed, path)
			}
		}
		n := a.counter(`overtime_cleanup_removed_files_total{rule="borg"}`)
		return len(removed) >= 6 && n == float64(len(removed)), fmt.Sprintf("counter %v, logged %q", n, removed)
	})
	var repoLocks, cacheLockNames int
	for _, path := range removed {
		rel, tmp := strings.TrimPrefix(path, dir+"/"), false
		for _, part := range strings.Split(rel, "/") {
			if strings.HasPrefix(part, "lock.exclusive.") && strings.HasSuffix(part, ".tmp") {
				tmp = true
			}
		}
		switch {
		case tmp:
		case strings.HasPrefix(rel, "repo/lock."):
			repoLocks++
		case strings.HasPrefix(rel, "base/.cache/borg/") && strings.Contains(rel, "/lock."):
			cacheLockNames++
		default:
			t.Errorf("removed %s, which is not one of borg's locks", path)
		}
	}
	if repoLocks != 3 || cacheLockNames != 3 {
		t.Fatalf("removed %d of the repository's 3 lock entries and %d of the cache's 3: %q", repoLocks, cacheLockNames, removed)
	}
	if got := a.skips(); len(got) != 0 {
		t.Fatalf("skips: %q", got)
	}
	// Stop the agent first so that the next create (which matches the
	// rule) is not a tree with a 3s deadline of its own.
	if code := a.stop(); code != 0 {
		t.Fatalf("agent exit code %d", code)
	}
	mustRunTool(t, dir, next, "borg", "create", "--lock-wait", "1", repo+"::b", "/etc/hostname")
	if out := mustRunTool(t, dir, next, "borg", "list", "--short", repo); !strings.Contains(out, "b") {
		t.Fatalf("borg list:\n%s", out)
	}
}

// Monitor mode: a tree past its deadline and grace is neither signalled nor
// killed and nothing is removed. When it exits on its own (the test closes
// its input), cleanup with `when: [always]` reports each removal it would
// make ("would remove", skipped{reason="monitor"}) and the files stay.
func TestMonitorModeOnlyReports(t *testing.T) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.Mkdir(in, 0o755); err != nil {
		t.Fatal(err)
	}
	const name = "ovt-monitor"
	a := startAgent(t, fmt.Sprintf(`
mode: monitor
rules:
  - name: %[1]s
    match: {comm: [%[1]s]}
    timeout: 2s
    kill: {signal: SIGTERM, grace: 1s}
    cleanup:
      when: [always]
      paths: [%[2]q]
`, name, in+"/*"))
	eng := engine(t, dir, name, fmt.Sprintf("echo lock > %[1]s/lock\nmkdir %[1]s/d\ncat > /dev/null", in))
	p := cg.launch(t, dir, nil, eng)
	var deadline time.Time
	eventually(t, scaled(15*time.Second), "files created", func() bool {
		info, ok := a.process(p.pid)
		deadline = info.Deadline
		return ok && slices.Contains(info.CreatedFiles, in+"/lock")
	})

	// Past deadline + grace (the agent's deadline: the process starts a
	// while after the fork call), both signals are counted as skipped, the
	// KILL not before its time.
	skipped := func(sig string) float64 {
		return a.counter(fmt.Sprintf(`overtime_kills_total{result="skipped_monitor",rule="ovt-monitor",signal=%q}`, sig))
	}
	eventually(t, time.Until(deadline.Add(time.Second+scaled(5*time.Second))), "the would-be KILL counted", func() bool { return skipped("SIGKILL") >= 1 })
	if now := time.Now(); now.Before(deadline.Add(time.Second)) {
		t.Fatalf("would-be KILL counted %v after the deadline, before deadline + grace (1s)", now.Sub(deadline))
	}
	if !p.alive() {
		t.Fatal("monitor mode ended the tree")
	}
	if info, _ := a.process(p.pid); info.State != "overdue" {
		t.Fatalf("state = %q, want overdue", info.State)
	}
	for _, sig := range []string{"SIGTERM", "SIGKILL"} {
		if v := skipped(sig); v != 1 {
			t.Fatalf("kills_total{%s,skipped_monitor} = %v", sig, v)
		}
	}
	if v := a.counter(`overtime_overdue_processes{rule="ovt-monitor"}`); v != 2 { // the shell and its cat
		t.Fatalf("overdue_processes = %v, want 2", v)
	}

	p.closeInput()
	if !p.waitDone(scaled(3 * time.Second)) {
		t.Fatal("the engine did not exit at the end of its input")
	}
	if p.err != nil {
		t.Fatalf("engine: %v", p.err)
	}
	eventually(t, scaled(15*time.Second), "would-be removals reported", func() bool {
		return a.counter(`overtime_cleanup_skipped_total{reason="monitor",rule="ovt-monitor"}`) == 2
	})
	var would []string
	for _, rec := range a.logLines("would remove") {
		would = append(would, fmt.Sprint(rec["path"]))
	}
	slices.Sort(would)
	if want := []string{in + "/d", in + "/lock"}; !slices.Equal(would, want) {
		t.Fatalf("would remove %q, want %q", would, want)
	}
	wantContent(t, in+"/lock", "lock\n")
	if st, err := os.Lstat(in + "/d"); err != nil || !st.IsDir() {
		t.Fatalf("%s/d: %v", in, err)
	}
	if v := a.counter(`overtime_cleanup_removed_files_total{rule="ovt-monitor"}`); v != 0 {
		t.Fatalf("removed_files_total = %v in monitor mode", v)
	}
	if v := a.counter(`overtime_process_runtime_seconds_count{outcome="exited",rule="ovt-monitor"}`); v != 1 {
		t.Fatalf("runtime{exited} count = %v", v)
	}
}

// The file tracepoints are attached only while something is tracked. The
// first engine on an idle node is held at exec until they are attached, so
// the lock its very first command writes is recorded, and removed once it is
// killed; with nothing tracked for --file-tracing-idle they are detached
// again (also after start, where the calibration attached them). Two
// rounds: attach, detach, attach, detach.
//
// With a hold bound far shorter than the attach (20ms, while an attach
// right after a detach waits for the kernel's tracepoint lock for tens to
// hundreds of milliseconds), the guard keeps the hold as long as the agent
// says it is attaching: the lock is recorded all the same and no hold
// expires.
func TestFileTracingOnDemand(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
	}{
		{"default bound", nil},
		{"bound shorter than the attach", []string{"--hold-bound", "20ms"}},
	} {
		t.Run(c.name, func(t *testing.T) { fileTracingOnDemand(t, c.args...) })
	}
}

func fileTracingOnDemand(t *testing.T, extra ...string) {
	cg := newTestCgroup(t)
	dir := t.TempDir()
	locks := filepath.Join(dir, "locks")
	if err := os.Mkdir(locks, 0o755); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, `
mode: enforce
rules:
  - name: ovt-first
    match: {comm: [ovt-first]}
    timeout: `+scaled(2*time.Second).String()+`
    kill: {signal: SIGKILL, grace: 1s}
    cleanup: {paths: ["`+locks+`/*"]}
`, append([]string{"--file-tracing-idle", "1s"}, extra...)...)
	// Attached by the start-up calibration, detached once idle.
	eventually(t, scaled(10*time.Second), "file tracing detached after 1s idle at start", func() bool {
		return a.metric("overtime_file_tracing") == 0
	})
	eng := engine(t, dir, "ovt-first", `echo $$ > "$1/lock.$$"; exec sleep 1000`)
	for round := range 2 {
		p := cg.launch(t, dir, nil, eng, locks)
		lock := filepath.Join(locks, fmt.Sprintf("lock.%d", p.pid))
		eventually(t, scaled(5*time.Second), "the first command's lock in created_files", func() bool {
			info, ok := a.process(p.pid)
			return ok && slices.Contains(info.CreatedFiles, lock)
		})
		if v := a.metric("overtime_file_tracing"); v != 1 {
			t.Fatalf("round %d: overtime_file_tracing = %v while tracking", round, v)
		}
		if !p.waitDone(scaled(10 * time.Second)) {
			t.Fatalf("round %d: engine not ended at its deadline", round)
		}
		eventually(t, scaled(5*time.Second), "its lock removed", func() bool {
			_, err := os.Lstat(lock)
			return errors.Is(err, os.ErrNotExist)
		})
		eventually(t, scaled(10*time.Second), "file tracing detached after 1s idle", func() bool {
			return a.metric("overtime_file_tracing") == 0
		})
	}
	if got := a.skips(); len(got) != 0 {
		t.Fatalf("skips: %q", got)
	}
	if v := a.metric("overtime_holds_expired_total"); v != 0 {
		t.Fatalf("overtime_holds_expired_total = %v: a hold was resumed before the agent decided", v)
	}
}
