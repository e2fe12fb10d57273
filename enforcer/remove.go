package enforcer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Skip reasons Remove returns. They are metric label values.
const (
	SkipReplaced    = "replaced"     // not the inode the tree created, or reached through a symlink or ".."
	SkipHeldOpen    = "held_open"    // another open file description exists
	SkipNotEmpty    = "not_empty"    // a directory with entries
	SkipGone        = "gone"         // nothing there any more
	SkipNoNamespace = "no_namespace" // the tree's filesystem view was never kept
	SkipUnsupported = "unsupported"  // not a regular file, directory or symlink
)

// resolveFlags keep the lookup of the parent directory inside the tree's
// root and off every symlink: a component swapped for a link (or a ".."
// that climbs out) fails instead of leading elsewhere.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// Remove implements agent.Enforcer. The entry is checked (same inode, not
// held open, empty if a directory), then renamed to a private name in the
// same directory and checked again before it is unlinked, so a swap between
// check and unlink can never make it delete something else: whatever sits
// under the private name is exactly what will be unlinked.
func (e *Enforcer) Remove(name, p string, dev, ino uint64, dryRun bool) (freed int64, skip string, err error) {
	t := e.lookup(name, false)
	if t == nil {
		return 0, SkipNoNamespace, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.rootFD < 0 {
		return 0, SkipNoNamespace, nil
	}
	if !path.IsAbs(p) {
		return 0, "", fmt.Errorf("remove %q: path is not absolute", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			// The agent records resolved paths; a ".." means the path
			// was built by someone else and may not be what was created.
			return 0, SkipReplaced, nil
		}
	}
	p = path.Clean(p)
	base := path.Base(p)
	if p == "/" || base == "." {
		return 0, "", fmt.Errorf("remove %q: not an entry", p)
	}
	rel := strings.TrimPrefix(path.Dir(p), "/")
	if rel == "" {
		rel = "."
	}

	dfd, err := openBeneath(t.rootFD, rel)
	switch {
	case errors.Is(err, unix.ENOENT):
		return 0, SkipGone, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOTDIR):
		return 0, SkipReplaced, nil
	case err != nil:
		return 0, "", fmt.Errorf("remove %s: open parent: %w", p, err)
	}
	defer unix.Close(dfd)

	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, SkipGone, nil
		}
		return 0, "", fmt.Errorf("remove %s: stat: %w", p, err)
	}
	if !sameInode(&st, dev, ino) {
		return 0, SkipReplaced, nil
	}

	unlinkFlags := 0
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd, skip, err := e.openUnheld(dfd, base, dev, ino)
		if skip != "" || err != nil {
			return 0, skip, wrapPath(p, err)
		}
		// Closing fd drops the lease; keep it until the unlink is done so
		// that nobody opens the file in between.
		defer unix.Close(fd)
		freed = st.Size
	case unix.S_IFDIR:
		empty, skip, err := emptyDir(dfd, base, dev, ino)
		if skip != "" || err != nil {
			return 0, skip, wrapPath(p, err)
		}
		if !empty {
			return 0, SkipNotEmpty, nil
		}
		unlinkFlags = unix.AT_REMOVEDIR
	case unix.S_IFLNK:
		// Removed as a link: nothing here reads or follows its target.
	default:
		return 0, SkipUnsupported, nil
	}
	if dryRun {
		return freed, "", nil
	}

	private, err := privateName()
	if err != nil {
		return 0, "", err
	}
	if err := unix.Renameat2(dfd, base, dfd, private, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, SkipGone, nil
		}
		return 0, "", fmt.Errorf("remove %s: rename aside: %w", p, err)
	}
	if err := unix.Fstatat(dfd, private, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || !sameInode(&st, dev, ino) {
		if berr := putBack(dfd, private, base); berr != nil {
			return 0, "", fmt.Errorf("remove %s: swapped during removal and cannot be put back from %s: %w", p, private, berr)
		}
		if err != nil {
			return 0, "", fmt.Errorf("remove %s: stat aside: %w", p, err)
		}
		return 0, SkipReplaced, nil
	}
	if err := unix.Unlinkat(dfd, private, unlinkFlags); err != nil {
		if berr := putBack(dfd, private, base); berr != nil {
			return 0, "", fmt.Errorf("remove %s: unlink: %v; put back from %s: %w", p, err, private, berr)
		}
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return 0, SkipNotEmpty, nil
		}
		return 0, "", fmt.Errorf("remove %s: unlink: %w", p, err)
	}
	return freed, "", nil
}

func wrapPath(p string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("remove %s: %w", p, err)
}

func sameInode(st *unix.Stat_t, dev, ino uint64) bool {
	return uint64(st.Dev) == dev && st.Ino == ino
}

// openBeneath opens dir (relative to root) as an O_PATH directory.
// openat2 returns EAGAIN when a rename elsewhere races the lookup; retry a
// few times before calling it an error.
func openBeneath(root int, dir string) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveFlags}
	var err error
	for range 5 {
		var fd int
		fd, err = unix.Openat2(root, dir, how)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	return -1, err
}

// openUnheld opens the regular file base in dfd and proves no other open
// file description exists. The kernel check is a write lease: it is refused
// while anyone else has the file open and, once granted, makes any new
// open wait for us. Filesystems without leases fall back to a /proc scan.
func (e *Enforcer) openUnheld(dfd int, base string, dev, ino uint64) (fd int, skip string, err error) {
	fd, err = unix.Openat(dfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, SkipGone, nil
	case errors.Is(err, unix.ELOOP):
		return -1, SkipReplaced, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		// Someone else holds a lease on it.
		return -1, SkipHeldOpen, nil
	case err != nil:
		return -1, "", fmt.Errorf("open: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("fstat: %w", err)
	}
	if !sameInode(&st, dev, ino) {
		unix.Close(fd)
		return -1, SkipReplaced, nil
	}
	held := false
	_, lerr := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK)
	if e.noLease {
		lerr = unix.EINVAL
	}
	switch {
	case lerr == nil:
	case errors.Is(lerr, unix.EAGAIN), errors.Is(lerr, unix.EBUSY):
		held = true
	case errors.Is(lerr, unix.EINVAL), errors.Is(lerr, unix.ENOSYS), errors.Is(lerr, unix.EPERM), errors.Is(lerr, unix.EACCES):
		// No leases here (NFS, fs.leases-enable=0; EACCES: a file of
		// another user without CAP_LEASE): look
		// for the inode among every process's open files instead. This
		// is a snapshot; an open right after it is not seen.
		held, err = e.openElsewhere(fd, dev, ino)
		if err != nil {
			unix.Close(fd)
			return -1, "", fmt.Errorf("scan open files: %w", err)
		}
	default:
		unix.Close(fd)
		return -1, "", fmt.Errorf("lease: %w", lerr)
	}
	if held {
		unix.Close(fd)
		return -1, SkipHeldOpen, nil
	}
	return fd, "", nil
}

// openElsewhere reports whether any process other than our own fd self
// holds dev/ino open, by stat-ing every procRoot/PID/fd/N.
func (e *Enforcer) openElsewhere(self int, dev, ino uint64) (bool, error) {
	me := os.Getpid()
	if s, err := os.Readlink(e.procRoot + "/self"); err == nil {
		fmt.Sscan(s, &me)
	}
	procs, err := os.ReadDir(e.procRoot)
	if err != nil {
		return false, err
	}
	for _, pd := range procs {
		pid := 0
		if _, err := fmt.Sscan(pd.Name(), &pid); err != nil || pid <= 0 {
			continue
		}
		dir := fmt.Sprintf("%s/%d/fd", e.procRoot, pid)
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // exited, or a kernel thread
		}
		for _, f := range fds {
			if pid == me && f.Name() == fmt.Sprint(self) {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(dir+"/"+f.Name(), &st) != nil {
				continue
			}
			if sameInode(&st, dev, ino) {
				return true, nil
			}
		}
	}
	return false, nil
}

// emptyDir opens base in dfd as a directory (never through a symlink),
// checks it is dev/ino, and reports whether it has no entries.
func emptyDir(dfd int, base string, dev, ino uint64) (bool, string, error) {
	fd, err := unix.Openat(dfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, SkipGone, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return false, SkipReplaced, nil
	case err != nil:
		return false, "", fmt.Errorf("open dir: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, "", fmt.Errorf("fstat dir: %w", err)
	}
	if !sameInode(&st, dev, ino) {
		return false, SkipReplaced, nil
	}
	names, err := f.Readdirnames(1)
	if err == io.EOF {
		return true, "", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("read dir: %w", err)
	}
	return len(names) == 0, "", nil
}

func privateName() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return ".overtime-rm-" + hex.EncodeToString(b), nil
}

// putBack renames the private name back to base, refusing to overwrite
// anything that appeared there meanwhile.
func putBack(dfd int, private, base string) error {
	return unix.Renameat2(dfd, private, dfd, base, unix.RENAME_NOREPLACE)
}
