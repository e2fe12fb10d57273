package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"overtime/internal/node"
	"overtime/internal/procstat"
)

// Sample reads the usage of each member. A member that is gone, or whose
// PID now names a process with another start time, is left out: the
// result has one entry per member that could be read.
func (p *Procfs) Sample(members []node.Member) []node.Usage {
	out := make([]node.Usage, 0, len(members))
	for _, m := range members {
		proc, err := p.fs.Proc(m.PID)
		if err != nil {
			continue
		}
		st, err := proc.Stat()
		if err != nil || !startedAt(st.Starttime, m.Born) {
			continue
		}
		io, err := proc.IO()
		if err != nil {
			continue
		}
		out = append(out, node.Usage{
			PID: m.PID, Born: m.Born,
			IO:    io.RChar + io.WChar,
			Calls: io.SyscR + io.SyscW,
			CPU:   time.Duration(st.UTime+st.STime) * procstat.Tick,
		})
	}
	return out
}

// startedAt reports whether a /proc/PID/stat starttime (clock ticks) is
// born, which may be finer (the kernel's fork time, in nanoseconds).
func startedAt(ticks uint64, born time.Duration) bool {
	return ticks == procstat.BootToTicks(born)
}

// remoteFS are filesystems whose operations wait on something outside the
// node (a server, a daemon): where a process sleeps uninterruptibly when it
// stops answering.
var remoteFS = []string{"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "glusterfs", "lustre", "afs", "fuse", "fuseblk", "virtiofs", "gfs2", "ocfs2"}

func isRemoteFS(t string) bool {
	base, _, _ := strings.Cut(t, ".") // fuse.sshfs, fuse.rclone
	for _, r := range remoteFS {
		if base == r {
			return true
		}
	}
	return false
}

// Diagnose reads what process pid (started at born) is blocked on: its
// state, wchan and kernel stack, and the network or FUSE mount of an open
// file or its working directory, from its own mount table. It reads what
// it can; an error means the process is gone.
func (p *Procfs) Diagnose(pid int, born time.Duration) (node.Blocked, error) {
	var b node.Blocked
	proc, err := p.fs.Proc(pid)
	if err != nil {
		return b, fmt.Errorf("process %d: %w", pid, ErrGone)
	}
	st, err := proc.Stat()
	if err != nil || !startedAt(st.Starttime, born) {
		return b, fmt.Errorf("process %d: %w", pid, ErrGone)
	}
	b.State = st.State
	if w, err := proc.Wchan(); err == nil && w != "0" {
		b.Wchan = w
	}
	if raw, err := os.ReadFile(filepath.Join(p.root, strconv.Itoa(pid), "stack")); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			// "[<0>] fuse_simple_request+0x1a0/0x2d0": keep the symbol.
			if _, sym, ok := strings.Cut(line, "] "); ok {
				line = sym
			}
			if line = strings.TrimSpace(line); line != "" {
				b.Stack = append(b.Stack, line)
			}
		}
	}
	mounts, err := proc.MountInfo()
	if err != nil {
		return b, nil
	}
	// Longest mount point first: the mount a path is on.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPoint) > len(mounts[j].MountPoint) })
	var paths []string
	if cwd, err := proc.Cwd(); err == nil {
		paths = append(paths, cwd)
	}
	if files, err := p.OpenFiles(pid); err == nil {
		paths = append(paths, files...)
	}
	for _, path := range paths {
		path = strings.TrimSuffix(path, " (deleted)")
		for _, m := range mounts {
			if !under(path, m.MountPoint) {
				continue
			}
			if isRemoteFS(m.FSType) {
				b.FSType, b.MountPoint, b.Source, b.File = m.FSType, m.MountPoint, m.Source, path
				return b, nil
			}
			break
		}
	}
	// No open file on such a mount (a stat or lookup by path): when the
	// kernel stack names one filesystem and the process has exactly one
	// mount of it, that is the one.
	stack := strings.Join(b.Stack, " ") + " " + b.Wchan
	var hit []int
	for i, m := range mounts {
		base, _, _ := strings.Cut(m.FSType, ".")
		if isRemoteFS(m.FSType) && strings.Contains(stack, base+"_") {
			hit = append(hit, i)
		}
	}
	if len(hit) == 1 {
		m := mounts[hit[0]]
		b.FSType, b.MountPoint, b.Source = m.FSType, m.MountPoint, m.Source
	}
	return b, nil
}

// under reports whether path is mount point mp or below it.
func under(path, mp string) bool {
	return mp == "/" || path == mp || strings.HasPrefix(path, mp+"/")
}
