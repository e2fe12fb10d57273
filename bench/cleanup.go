package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// engClean creates $2 files in directory $1, then waits on a sleep child:
// a two-process tree with files to clean up once it is killed.
const engClean = "ovt-clean"

const cleanScript = "#!/bin/sh\ncd \"$1\" || exit 1\ni=0\nwhile [ $i -lt \"$2\" ]; do : > f$i; i=$((i+1)); done\nsleep 3600\nexit 0\n"

// cleanupConfig adds to killConfig a rule whose trees are killed at their
// deadline and whose files under mnt are removed then.
func cleanupConfig(timeout, cleanTimeout time.Duration, mnt string) string {
	return killConfig(timeout) + fmt.Sprintf(`  - name: ovt-clean
    match: {comm: [%s]}
    timeout: %s
    kill: {signal: SIGKILL, grace: 0s}
    cleanup: {paths: [%q], when: [killed]}
`, engClean, cleanTimeout, mnt+"/**")
}

// killWithCleanup: the kill latency of 1,000 trees (as in target 3) while
// 50 other trees are killed at the same moment and the agent removes what
// they created, against the same run without those trees. The files live
// on a FUSE mount (fuse-overlayfs), in a mount namespace of their own, so every
// check of the removal (openat, fstat, the lease, rename, unlink) is a
// round trip to a userspace server, as on a network backup target. The
// kills must not wait behind the removals.
func killWithCleanup(b *bench) error {
	n, trees, files, spreadOver := 1000, 50, 200, 3*time.Second
	if b.quick {
		n, files = 300, 100
	}
	// Room for the start of 1,000 trees to fall behind its pace on a
	// loaded node: every tree is tracked before the first deadline.
	timeout := spreadOver + 8*time.Second
	b.out.section(fmt.Sprintf("9. kill latency under cleanup: %d trees (%s) with deadlines over %v, while %d trees with %d files each on FUSE are killed and cleaned up",
		n, engKill, spreadOver, trees, files))
	if _, err := exec.LookPath("fuse-overlayfs"); err != nil {
		return fmt.Errorf("fuse-overlayfs not installed (make deps): %w", err)
	}
	if err := needPIDs(2*n + 2*trees); err != nil {
		return err
	}
	if err := os.WriteFile(b.engine(engClean), []byte(cleanScript), 0o755); err != nil {
		return err
	}
	// fuse-overlayfs: a FUSE filesystem that renames with RENAME_NOREPLACE,
	// which removal needs (bindfs refuses it). What the trees make lands
	// in upper.
	lower, upper, work, mnt := filepath.Join(b.tmp, "fuse-lower"), filepath.Join(b.tmp, "fuse-upper"),
		filepath.Join(b.tmp, "fuse-work"), filepath.Join(b.tmp, "fuse-mnt")
	for _, d := range []string{lower, upper, work, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for i := range trees {
		if err := os.Mkdir(filepath.Join(upper, "t"+strconv.Itoa(i)), 0o755); err != nil {
			return err
		}
	}
	cleanTimeout := 40 * time.Second

	// Without the cleanups.
	base, err := killBatch(b, "cleanbase", "kill_1k_nocleanup", cleanupConfig(timeout, cleanTimeout, mnt), n, spreadOver, timeout)
	if err != nil {
		return err
	}

	// With them: a FUSE server in a mount namespace of its own (never
	// the node's), the cleanup trees entering it through nsenter.
	cl, err := b.subCgroup("cleanup")
	if err != nil {
		return err
	}
	fuse := cl.command("unshare", "--mount", "--propagation", "private", "fuse-overlayfs", "-f",
		"-o", "lowerdir="+lower+",upperdir="+upper+",workdir="+work, mnt)
	if err := fuse.Start(); err != nil {
		return fmt.Errorf("start fuse-overlayfs: %w", err)
	}
	defer func() { _ = fuse.Process.Kill(); _ = fuse.Wait() }()
	if err := waitFor(10*time.Second, func() bool { return mountedFUSE(fuse.Process.Pid, mnt) }); err != nil {
		return fmt.Errorf("fuse-overlayfs mount in its namespace: %w", err)
	}
	a, err := b.runAgent("cleanup", cleanupConfig(timeout, cleanTimeout, mnt))
	if err != nil {
		return err
	}
	ns := fmt.Sprintf("--mount=/proc/%d/ns/mnt", fuse.Process.Pid)
	for i := range trees {
		dir := filepath.Join(mnt, "t"+strconv.Itoa(i))
		if _, err := cl.start("/usr/bin/nsenter", ns, "--", b.engine(engClean), dir, strconv.Itoa(files)); err != nil {
			return err
		}
	}
	// Every file made, and recorded, well before the cleanup trees'
	// deadline.
	made := func() int {
		total := 0
		for i := range trees {
			ents, _ := os.ReadDir(filepath.Join(upper, "t"+strconv.Itoa(i)))
			total += len(ents)
		}
		return total
	}
	if err := waitFor(cleanTimeout-timeout-5*time.Second, func() bool { return made() >= trees*files }); err != nil {
		return fmt.Errorf("cleanup trees made %d of %d files: %w", made(), trees*files, err)
	}
	execs := treeCgroups(cl.dir)
	if len(execs) != trees {
		return fmt.Errorf("%d cleanup trees tracked, want %d", len(execs), trees)
	}
	var cleanAt time.Duration
	for _, at := range execs {
		cleanAt = max(cleanAt, at+cleanTimeout)
	}
	// The kill trees' deadlines start a third into the spread before the
	// cleanup trees' deadline: most of them come while the cleanups run.
	sleepUntil(cleanAt - timeout - spreadOver/3)
	kl, err := b.subCgroup("cleankill")
	if err != nil {
		return err
	}
	kr, err := startKillRun(a, kl, n, 2*n, spreadOver, timeout, b.engine(engKill))
	if err != nil {
		return err
	}
	with, err := finishKill(b, a, kr, "kill_1k_cleanup", timeout, timeout+spreadOver+60*time.Second)
	if err != nil {
		return err
	}
	m, err := a.waitMetric(60*time.Second, func(m metrics) bool {
		return m.Get(`overtime_cleanup_removed_files_total{rule="ovt-clean"}`) >= float64(trees*files)
	})
	removed := m.Get(`overtime_cleanup_removed_files_total{rule="ovt-clean"}`)
	b.out.info("cleanup_files_removed", fmt.Sprintf("%.0f", removed),
		fmt.Sprintf("of %d files the %d killed trees made on FUSE, left: %d", trees*files, trees, made()))
	if err != nil {
		for series, v := range m.All() {
			if strings.HasPrefix(series, "overtime_cleanup_") {
				b.out.note("%s %.0f", series, v)
			}
		}
		return fmt.Errorf("cleanup incomplete: %.0f of %d files removed: %w", removed, trees*files, err)
	}
	p0, p1 := percentile(base, 0.99), percentile(with, 0.99)
	if p0 <= 0 {
		return fmt.Errorf("no kill latency without cleanups")
	}
	ratio := float64(p1) / float64(p0)
	b.out.check("kill_cleanup_p99_ratio", fmt.Sprintf("%.2fx", ratio),
		fmt.Sprintf("≤ 1.5x, p99 %s with %d trees' cleanups / %s without", ms(p1), trees, ms(p0)), ratio <= 1.5)
	return nil
}

// mountedFUSE reports whether process pid sees a FUSE mount at mnt.
func mountedFUSE(pid int, mnt string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt && strings.Contains(line, " - fuse") {
			return true
		}
	}
	return false
}

// waitFor polls cond every 50 ms, at most d.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not in %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
