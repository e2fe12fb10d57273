package enforcer

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"overtime/internal/testtool"
)

func devIno(t *testing.T, p string) (uint64, uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Dev), st.Ino
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func writeFile(t *testing.T, p string, n int) {
	t.Helper()
	if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
		t.Fatal(err)
	}
}

// viewTree confines a process the test started (it shares the test's
// root), so the tree has a filesystem view.
func viewTree(t *testing.T) (*Enforcer, string) {
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	q := start(t, p, "exec sleep 100")
	name := treeName(t, e)
	confine(t, e, name, q)
	return e, name
}

func mustRemove(t *testing.T, e *Enforcer, name, p string, dev, ino uint64, dry bool, wantSkip string) int64 {
	t.Helper()
	freed, skip, err := e.Remove(name, p, dev, ino, dry)
	if err != nil {
		t.Fatalf("Remove(%s): %v", p, err)
	}
	if skip != wantSkip {
		t.Fatalf("Remove(%s) skip = %q, want %q", p, skip, wantSkip)
	}
	return freed
}

func TestRemove(t *testing.T) {
	e, name := viewTree(t)

	t.Run("created file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "lock")
		writeFile(t, f, 1234)
		dev, ino := devIno(t, f)
		if freed := mustRemove(t, e, name, f, dev, ino, false, ""); freed != 1234 {
			t.Fatalf("freed %d, want 1234", freed)
		}
		if exists(f) {
			t.Fatal("file still there")
		}
		mustRemove(t, e, name, f, dev, ino, false, SkipGone)
	})

	t.Run("name with a newline", func(t *testing.T) {
		d := t.TempDir()
		f := filepath.Join(d, "lock\nother")
		other := filepath.Join(d, "other")
		writeFile(t, f, 5)
		writeFile(t, other, 6)
		dev, ino := devIno(t, f)
		mustRemove(t, e, name, f, dev, ino, false, "")
		if exists(f) || !exists(other) {
			t.Fatalf("newline name: removed=%v, neighbour kept=%v", !exists(f), exists(other))
		}
	})

	t.Run("bind mount appearing under the path", func(t *testing.T) {
		d := t.TempDir()
		sub := filepath.Join(d, "locks")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(sub, "lock")
		writeFile(t, f, 3)
		dev, ino := devIno(t, f)
		// Someone mounts another directory over locks/ holding a file of the
		// same name: the recorded inode is not behind the path any more.
		elsewhere := t.TempDir()
		victim := filepath.Join(elsewhere, "lock")
		writeFile(t, victim, 4)
		if err := unix.Mount(elsewhere, sub, "", unix.MS_BIND, ""); err != nil {
			testtool.Skip(t, "bind mount: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
		mustRemove(t, e, name, f, dev, ino, false, SkipReplaced)
		if !exists(victim) {
			t.Fatal("the file on the bind mount was removed")
		}
		// With the mount gone, the tree's own file is back, untouched.
		if err := unix.Unmount(sub, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		if !exists(f) {
			t.Fatal("the tree's own file vanished")
		}
	})

	t.Run("dry run", func(t *testing.T) {
		d := t.TempDir()
		f := filepath.Join(d, "lock")
		writeFile(t, f, 77)
		dev, ino := devIno(t, f)
		if freed := mustRemove(t, e, name, f, dev, ino, true, ""); freed != 77 {
			t.Fatalf("dry run freed %d, want 77", freed)
		}
		if !exists(f) {
			t.Fatal("dry run removed the file")
		}
		if ents, _ := os.ReadDir(d); len(ents) != 1 {
			t.Fatalf("dry run left %d entries", len(ents))
		}
	})

	t.Run("replaced inode", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "lock")
		writeFile(t, f, 10)
		dev, ino := devIno(t, f)
		// Made while the original still exists, so the inode number
		// cannot be recycled.
		writeFile(t, f+".new", 20)
		if err := os.Rename(f+".new", f); err != nil {
			t.Fatal(err)
		}
		mustRemove(t, e, name, f, dev, ino, false, SkipReplaced)
		if fi, err := os.Stat(f); err != nil || fi.Size() != 20 {
			t.Fatalf("replacement touched: %v", err)
		}
	})

	heldOpen := func(t *testing.T, noLease bool) {
		e.noLease = noLease
		defer func() { e.noLease = false }()
		d := t.TempDir()

		// Held by another process.
		f := filepath.Join(d, "held")
		writeFile(t, f, 5)
		dev, ino := devIno(t, f)
		release := holdOpen(t, f)
		mustRemove(t, e, name, f, dev, ino, false, SkipHeldOpen)
		if !exists(f) {
			t.Fatal("held file removed")
		}
		release()
		mustRemove(t, e, name, f, dev, ino, false, "")

		// Held by a descriptor of this process.
		g := filepath.Join(d, "mine")
		writeFile(t, g, 5)
		dev, ino = devIno(t, g)
		h, err := os.OpenFile(g, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		mustRemove(t, e, name, g, dev, ino, false, SkipHeldOpen)
		if !exists(g) {
			t.Fatal("held file removed")
		}
		h.Close()
		mustRemove(t, e, name, g, dev, ino, false, "")
	}
	t.Run("held open (lease)", func(t *testing.T) { heldOpen(t, false) })
	t.Run("held open (proc scan)", func(t *testing.T) { heldOpen(t, true) })

	// Without CAP_LEASE the kernel refuses a lease on another user's file
	// (EACCES): the check falls back to the scan of open files.
	t.Run("held open (another user's file, no CAP_LEASE)", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "held")
		writeFile(t, f, 5)
		if err := os.Chown(f, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		dev, ino := devIno(t, f)
		release := holdOpen(t, f)
		withoutCaps(t, func() {
			if fd, err := unix.Open(f, unix.O_RDONLY, 0); err == nil {
				_, lerr := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK)
				unix.Close(fd)
				if !errors.Is(lerr, unix.EACCES) {
					t.Fatalf("lease without CAP_LEASE: %v, want EACCES", lerr)
				}
			}
			mustRemove(t, e, name, f, dev, ino, false, SkipHeldOpen)
		}, unix.CAP_LEASE)
		if !exists(f) {
			t.Fatal("held file removed")
		}
		release()
		withoutCaps(t, func() { mustRemove(t, e, name, f, dev, ino, false, "") }, unix.CAP_LEASE)
	})

	t.Run("directories", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "lock.exclusive")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "inner"), 1)
		dev, ino := devIno(t, d)
		mustRemove(t, e, name, d, dev, ino, true, SkipNotEmpty)
		mustRemove(t, e, name, d, dev, ino, false, SkipNotEmpty)
		if !exists(filepath.Join(d, "inner")) {
			t.Fatal("non-empty directory touched")
		}
		os.Remove(filepath.Join(d, "inner"))
		mustRemove(t, e, name, d, dev, ino, false, "")
		if exists(d) {
			t.Fatal("empty directory still there")
		}
	})

	t.Run("symlink removed as link", func(t *testing.T) {
		d := t.TempDir()
		target := filepath.Join(d, "target")
		writeFile(t, target, 9)
		link := filepath.Join(d, "link")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		dev, ino := devIno(t, link)
		if freed := mustRemove(t, e, name, link, dev, ino, false, ""); freed != 0 {
			t.Fatalf("freed %d for a link", freed)
		}
		if exists(link) || !exists(target) {
			t.Fatal("link not removed, or target touched")
		}
		// Asking for the target's inode through the link never reaches it.
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		tdev, tino := devIno(t, target)
		mustRemove(t, e, name, link, tdev, tino, false, SkipReplaced)
		if !exists(target) {
			t.Fatal("target removed through the link")
		}
	})

	t.Run("parent swapped for symlink", func(t *testing.T) {
		d := t.TempDir()
		outside := filepath.Join(d, "outside")
		os.Mkdir(outside, 0o700)
		victim := filepath.Join(outside, "f")
		writeFile(t, victim, 3)
		dir := filepath.Join(d, "work")
		os.Mkdir(dir, 0o700)
		// Worst case: the caller even holds the victim's own inode.
		dev, ino := devIno(t, victim)
		if err := os.Rename(dir, dir+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, dir); err != nil {
			t.Fatal(err)
		}
		mustRemove(t, e, name, filepath.Join(dir, "f"), dev, ino, false, SkipReplaced)
		if !exists(victim) {
			t.Fatal("file outside removed through a swapped parent")
		}
	})

	t.Run("dot-dot", func(t *testing.T) {
		d := t.TempDir()
		os.Mkdir(filepath.Join(d, "sub"), 0o700)
		f := filepath.Join(d, "f")
		writeFile(t, f, 3)
		dev, ino := devIno(t, f)
		mustRemove(t, e, name, d+"/sub/../f", dev, ino, false, SkipReplaced)
		if !exists(f) {
			t.Fatal("removed through ..")
		}
	})

	t.Run("no namespace", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		writeFile(t, f, 3)
		dev, ino := devIno(t, f)
		mustRemove(t, e, testPrefix+".never-confined", f, dev, ino, false, SkipNoNamespace)
		if !exists(f) {
			t.Fatal("removed without a namespace")
		}
	})

	t.Run("no private names left", func(t *testing.T) {
		d := t.TempDir()
		f := filepath.Join(d, "x")
		writeFile(t, f, 1)
		dev, ino := devIno(t, f)
		mustRemove(t, e, name, f, dev, ino, false, "")
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Fatalf("left %v", ents)
		}
	})
}

// A file the tree made on a tmpfs of its own mount namespace is removed
// there after the tree is dead, while the node's file at the same path
// stays.
func TestRemoveInMountNamespace(t *testing.T) {
	testtool.Find(t, "unshare")
	p := newParent(t, false)
	e := newEnforcer(t, v2Mode)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "f")
	if err := os.WriteFile(node, []byte("node"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := start(t, p, "exec unshare -m sh -c 'mount -t tmpfs none "+dir+"; echo ns > "+dir+"/f; exec sleep 100'")
	ndev, nino := devIno(t, node)
	inNS := "/proc/" + strconv.Itoa(q.pid) + "/root" + node
	deadline := time.Now().Add(5 * time.Second)
	var dev, ino uint64
	for {
		var st unix.Stat_t
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(q.pid) + "/comm")
		if string(b) == "sleep\n" && unix.Lstat(inNS, &st) == nil && uint64(st.Dev) != ndev {
			dev, ino = uint64(st.Dev), st.Ino
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("namespace file never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	name := treeName(t, e)
	confine(t, e, name, q)
	if err := e.Kill(name); err != nil {
		t.Fatal(err)
	}
	if !q.waitExit(5 * time.Second) {
		t.Fatal("process survived Kill")
	}
	// The node's file is a different inode: refused.
	mustRemove(t, e, name, node, ndev, nino, false, SkipReplaced)
	mustRemove(t, e, name, node, dev, ino, false, "")
	mustRemove(t, e, name, node, dev, ino, false, SkipGone)
	if b, err := os.ReadFile(node); err != nil || string(b) != "node" {
		t.Fatalf("node file touched: %q, %v", b, err)
	}
	if err := release(e, name); err != nil {
		t.Fatal(err)
	}
	mustRemove(t, e, name, node, dev, ino, false, SkipNoNamespace)
}

// withoutCaps runs f on this goroutine's thread with caps out of its
// effective set (capabilities are per thread), and puts them back.
func withoutCaps(t *testing.T, f func(), caps ...int) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved := data
	for _, c := range caps {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Capset(&hdr, &saved[0]); err != nil {
			panic("restore capabilities: " + err.Error())
		}
	}()
	f()
}

// holdOpen has another process (sleep, with the file as its stdin) hold f
// open until release is called.
func holdOpen(t *testing.T, f string) (release func()) {
	t.Helper()
	in, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("sleep", "100")
	cmd.Stdin = in
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) }
	t.Cleanup(release)
	return release
}
