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
		h, err := checkV2(orDefault(opts.Root, defaultV2Unified))
		return mode, h, err
	case ModeHybrid:
		h, err := checkV2(orDefault(opts.Root, defaultV2Hybrid))
		if err == nil {
			return mode, h, nil
		}
		// The unified hierarchy of a hybrid host is optional (and on old
		// kernels lacks cgroup.kill); the v1 freezer does the same job.
		v1h, err1 := checkV1(defaultV1Freezer)
		if err1 != nil {
			return "", nil, fmt.Errorf("hybrid cgroups: %v; and %v", err, err1)
		}
		if opts.Logger != nil {
			opts.Logger.Warn("cgroup v2 unusable on hybrid host, using the v1 freezer", "reason", err.Error())
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

// checkV2 makes sure mount is a cgroup2 filesystem whose kernel has
// cgroup.kill (5.14). cgroup.kill is absent from the root cgroup, so the
// kernel version is the probe: creating a cgroup just to look would touch
// the hierarchy before anything asked for it.
func checkV2(mount string) (hierarchy, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil {
		return nil, fmt.Errorf("cgroup v2 mount %s: %w", mount, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("cgroup v2 mount %s: not a cgroup2 filesystem", mount)
	}
	ok, rel, err := kernelAtLeast(5, 14)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("cgroup v2 mount %s: kernel %s has no cgroup.kill (needs 5.14)", mount, rel)
	}
	return v2{mount: mount}, nil
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
