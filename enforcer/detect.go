package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"

	"overtime/internal/procstat"
)

// Modes, as Options.Mode and Mode() spell them.
const (
	ModeUnified = "unified"
	ModeHybrid  = "hybrid"
	ModeLegacy  = "legacy"
)

const (
	defaultV2Unified = "/sys/fs/cgroup"
	defaultV2Hybrid  = "/sys/fs/cgroup/unified"
	defaultV1Freezer = "/sys/fs/cgroup/freezer"
)

// hierarchy is the cgroup tree the enforcer drives: v2 or the v1 freezer.
// Groups are paths relative to the mount, as /proc/PID/cgroup prints them.
type hierarchy interface {
	exists(group string) bool
	create(group string) error
	add(group string, pid int) error
	procs(group string) ([]int, error)
	kill(group string, sigkill func(pid int) error) error
	remove(group string) error
	mountpoint() string
}

// readProcs lists the PIDs in dir/cgroup.procs (v1 and v2 alike). One read:
// the library's Procs walks the directory and stats every file in it, a
// cost paid for every tree released.
func readProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s/cgroup.procs: %q: %w", dir, f, err)
		}
		out = append(out, pid)
	}
	return out, nil
}

// detect picks the hierarchy for opts. It returns the host mode and whether
// trees live in the v1 freezer.
func detect(opts Options) (string, hierarchy, error) {
	mode := opts.Mode
	if mode == "" {
		switch cgroups.Mode() {
		case cgroups.Unified:
			mode = ModeUnified
		case cgroups.Hybrid:
			mode = ModeHybrid
		case cgroups.Legacy:
			mode = ModeLegacy
		default:
			return "", nil, errors.New("no cgroup filesystem at /sys/fs/cgroup: mount cgroup2 (or the v1 freezer) there")
		}
	}
	switch mode {
	case ModeUnified:
		h, err := checkV2(orDefault(opts.Root, defaultV2Unified), opts.FreezeKill)
		return mode, h, err
	case ModeHybrid:
		h, err := checkV2(orDefault(opts.Root, defaultV2Hybrid), opts.FreezeKill)
		if err == nil && (!h.freeze || opts.FreezeKill) {
			return mode, h, nil
		}
		// The unified hierarchy of a hybrid host is optional; without
		// cgroup.kill (before 5.14) the v1 freezer, where the container
		// runtimes of a hybrid node keep their cgroups, is preferred to
		// the v2 freeze.
		v1h, err1 := checkV1(defaultV1Freezer)
		if err1 != nil {
			if err == nil {
				return mode, h, nil
			}
			return "", nil, fmt.Errorf("hybrid cgroups: %v; and %v", err, err1)
		}
		reason := "no cgroup.kill"
		if err != nil {
			reason = err.Error()
		}
		if opts.Logger != nil {
			opts.Logger.Warn("cgroup v2 of the hybrid host not used, using the v1 freezer", "reason", reason)
		}
		return mode, v1h, nil
	case ModeLegacy:
		h, err := checkV1(orDefault(opts.Root, defaultV1Freezer))
		return mode, h, err
	default:
		return "", nil, fmt.Errorf("cgroup mode %q: want %q, %q, %q or empty to detect", mode, ModeUnified, ModeHybrid, ModeLegacy)
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// checkV2 makes sure mount is a cgroup2 filesystem and picks its kill:
// cgroup.kill (5.14), or freeze-kill-thaw through cgroup.freeze (5.2) on
// older kernels or when forceFreeze asks for it.
func checkV2(mount string, forceFreeze bool) (v2, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil {
		return v2{}, fmt.Errorf("cgroup v2 mount %s: %w", mount, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return v2{}, fmt.Errorf("cgroup v2 mount %s: not a cgroup2 filesystem", mount)
	}
	kill, err := v2Offers(mount, "cgroup.kill", 5, 14)
	if err != nil {
		return v2{}, err
	}
	if kill && !forceFreeze {
		return v2{mount: mount}, nil
	}
	freeze, err := v2Offers(mount, "cgroup.freeze", 5, 2)
	if err != nil {
		return v2{}, err
	}
	if !freeze {
		return v2{}, fmt.Errorf("cgroup v2 mount %s: the kernel has neither cgroup.kill (5.14) nor cgroup.freeze (5.2)", mount)
	}
	return v2{mount: mount, freeze: true}, nil
}

// v2Offers tells whether the kernel's cgroup v2 has the interface file
// name. The root cgroup has neither cgroup.kill nor cgroup.freeze, and
// making a cgroup just to look would touch the hierarchy before anything
// asked for it: the file is looked for in the agent's own cgroup, else in
// the first child cgroup of the root; with none, the kernel version
// (major.minor, the release that added the file) decides.
func v2Offers(mount, name string, major, minor int) (bool, error) {
	var dirs []string
	if own, err := ownV2Cgroup(); err == nil && own != "/" {
		dirs = append(dirs, filepath.Join(mount, own))
	}
	if ents, err := os.ReadDir(mount); err == nil {
		for _, d := range ents {
			if d.IsDir() {
				dirs = append(dirs, filepath.Join(mount, d.Name()))
				break
			}
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err != nil {
			continue // not a cgroup (or not in this hierarchy)
		}
		_, err := os.Stat(filepath.Join(d, name))
		return err == nil, nil
	}
	ok, _, err := kernelAtLeast(major, minor)
	return ok, err
}

// ownV2Cgroup is the agent's cgroup v2 path ("0::" line).
func ownV2Cgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	if p, ok := procstat.CgroupPath(b, false); ok {
		return string(p), nil
	}
	return "", errors.New("no cgroup v2 line in /proc/self/cgroup")
}

// checkV1 makes sure mount is the v1 hierarchy holding the freezer.
func checkV1(mount string) (hierarchy, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil {
		return nil, fmt.Errorf("cgroup v1 freezer mount %s: %w", mount, err)
	}
	if st.Type != unix.CGROUP_SUPER_MAGIC {
		return nil, fmt.Errorf("cgroup v1 freezer mount %s: not a cgroup v1 filesystem", mount)
	}
	if filepath.Base(mount) != "freezer" {
		return nil, fmt.Errorf("cgroup v1 freezer mount %s: the directory must be named freezer", mount)
	}
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		return nil, fmt.Errorf("cgroup v1 freezer mount %s: %w", mount, err)
	}
	if ok, err := freezerMounted(mount); err != nil || !ok {
		return nil, fmt.Errorf("cgroup v1 mount %s does not carry the freezer controller", mount)
	}
	return v1{mount: mount}, nil
}

// freezerMounted looks in /proc/self/mountinfo for mount with the freezer
// super option.
func freezerMounted(mount string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || f[4] != mount || g[0] != "cgroup" {
			continue
		}
		for _, o := range strings.Split(g[2], ",") {
			if o == "freezer" {
				return true, nil
			}
		}
	}
	return false, nil
}

func kernelAtLeast(major, minor int) (bool, string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, "", fmt.Errorf("uname: %w", err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 || leadingInt(parts[0]) == 0 {
		return false, rel, fmt.Errorf("kernel release %q: cannot parse", rel)
	}
	// Minors may carry a suffix ("18-rc1"): keep the leading digits.
	ma, mi := leadingInt(parts[0]), leadingInt(parts[1])
	return ma > major || (ma == major && mi >= minor), rel, nil
}

func leadingInt(s string) int {
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			break
		}
		n = n*10 + int(r-'0')
	}
	return n
}
