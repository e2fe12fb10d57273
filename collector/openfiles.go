package collector

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OpenFiles lists the filesystem paths pid holds open, from the targets of
// /proc/PID/fd: sorted, each once. The paths are as the process sees them
// (its own mount namespace and root). Sockets, pipes, anonymous inodes,
// memfds and namespace descriptors are left out; a file removed while open
// keeps the kernel's " (deleted)" suffix, so an operator sees it is held.
// The error wraps ErrGone when the process no longer exists.
func (p *Procfs) OpenFiles(pid int) ([]string, error) {
	dirPath := filepath.Join(p.root, strconv.Itoa(pid), "fd")
	d, err := os.Open(dirPath)
	if err != nil {
		return nil, procErr(pid, "open fd", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, procErr(pid, "list fd", err)
	}
	dir := int(d.Fd())
	r := newProcReader()
	files := make([]string, 0, len(names))
	for _, name := range names {
		target, err := r.readlink(dir, name)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // closed since the listing
			}
			return nil, procErr(pid, "read fd "+name, err)
		}
		if isFilePath(target) {
			files = append(files, string(target))
		}
	}
	if len(names) == 0 && !procExists(p.root, pid) {
		// A process that has exited lists an empty fd directory.
		return nil, fmt.Errorf("process %d: %w", pid, ErrGone)
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// isFilePath tells a path on a filesystem from the other fd targets:
// "socket:[N]", "pipe:[N]", "anon_inode:[eventfd]", "net:[N]" (a namespace)
// and "/memfd:NAME (deleted)", which looks like a path but is not one.
func isFilePath(target []byte) bool {
	return len(target) > 0 && target[0] == '/' && !strings.HasPrefix(string(target), "/memfd:")
}

func procExists(root string, pid int) bool {
	_, err := os.Stat(filepath.Join(root, strconv.Itoa(pid), "stat"))
	return err == nil
}
