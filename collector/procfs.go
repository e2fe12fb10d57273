package collector

import (
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/prometheus/procfs"
)

// Procfs reads processes from a proc mount. Its root is a parameter so tests
// can point it at a fixture tree.
type Procfs struct {
	root string
	fs   procfs.FS
	// v1 selects the freezer line of /proc/PID/cgroup instead of the
	// cgroup v2 ("0::") line: on a pure cgroup v1 node.
	v1 bool
	// skipped counts processes scans left out for a read error.
	skipped atomic.Uint64
}

// NewProcfs opens the proc filesystem mounted at root ("/proc" on a node).
// v1 is true on a pure cgroup v1 node.
func NewProcfs(root string, v1 bool) (*Procfs, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, fmt.Errorf("open procfs %s: %w", root, err)
	}
	return &Procfs{root: root, fs: fs, v1: v1}, nil
}

// Root is the proc mount point.
func (p *Procfs) Root() string { return p.root }

// Cgroup returns pid's cgroup path: the v2 path, or on a pure v1 node the
// path in the freezer hierarchy.
func (p *Procfs) Cgroup(pid int) (string, error) {
	proc, err := p.fs.Proc(pid)
	if err != nil {
		return "", err
	}
	cgs, err := proc.Cgroups()
	if err != nil {
		return "", err
	}
	return pickCgroup(cgs, p.v1)
}

func pickCgroup(cgs []procfs.Cgroup, v1 bool) (string, error) {
	for _, cg := range cgs {
		if !v1 && cg.HierarchyID == 0 && len(cg.Controllers) == 0 {
			return cg.Path, nil
		}
		if v1 {
			for _, c := range cg.Controllers {
				if c == "freezer" {
					return cg.Path, nil
				}
			}
		}
	}
	want := "cgroup v2 (0::)"
	if v1 {
		want = "freezer"
	}
	return "", fmt.Errorf("no %s line in cgroup membership", want)
}

// Exe returns pid's resolved executable path.
func (p *Procfs) Exe(pid int) (string, error) {
	proc, err := p.fs.Proc(pid)
	if err != nil {
		return "", err
	}
	exe, err := proc.Executable()
	if err != nil {
		return "", err
	}
	// A replaced or deleted binary reads as "PATH (deleted)".
	return strings.TrimSuffix(exe, " (deleted)"), nil
}
