// Package procstat parses the two /proc/PID files every part of overtime
// reads by hand: the stat line and the cgroup membership. It is a leaf:
// collector, enforcer, the bench and the tests share it, so a comm with
// spaces, parentheses or newlines is handled in one place.
//
// The parsers work on bytes the caller read and do not allocate, so the
// start-up scan can keep its reused buffers.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// UserHZ is the unit of /proc/PID/stat times (USER_HZ): fixed at 100 in
// the kernel ABI on every architecture overtime runs on, whatever
// CONFIG_HZ is.
const UserHZ = 100

// Tick is one /proc/PID/stat clock tick.
const Tick = time.Second / UserHZ

// TicksToBoot converts a stat starttime (clock ticks since boot) to the
// boot-time clock.
func TicksToBoot(ticks uint64) time.Duration {
	return time.Duration(ticks) * Tick
}

// BootToTicks converts a boot-clock time (as the kernel's records carry
// it, in ns) to the clock ticks stat reports, truncating as the kernel
// does.
func BootToTicks(d time.Duration) uint64 {
	return uint64(d / Tick)
}

// PFKthread is PF_KTHREAD in Stat.Flags.
const PFKthread = 0x00200000

// Stat holds the fields of /proc/PID/stat overtime reads.
type Stat struct {
	// Comm is field 2 without its parentheses. It aliases the parsed
	// bytes.
	Comm  []byte
	State byte   // field 3: R, S, D, Z, T, t, X, ...
	PPID  int    // field 4
	Flags uint64 // field 9: PF_* flags
	UTime uint64 // field 14, clock ticks
	STime uint64 // field 15, clock ticks
	Start uint64 // field 22: starttime, clock ticks since boot
}

// ParseStat parses a /proc/PID/stat line. comm may hold any byte but NUL,
// spaces, parentheses and newlines included, so it runs from the first '('
// to the last ')'. Fields past 22 are not read.
func ParseStat(data []byte) (Stat, error) {
	var st Stat
	l := bytes.IndexByte(data, '(')
	r := bytes.LastIndexByte(data, ')')
	if l < 0 || r < l || r+2 > len(data) {
		return st, fmt.Errorf("unexpected format %q", truncate(data))
	}
	st.Comm = data[l+1 : r]
	rest := data[r+2:]
	for field := 3; field <= 22; field++ {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		tok := bytes.TrimRight(rest[:end], "\n")
		rest = rest[end:]
		if len(tok) == 0 {
			return st, fmt.Errorf("field %d missing in %q", field, truncate(data))
		}
		var err error
		switch field {
		case 3:
			st.State = tok[0]
		case 4:
			st.PPID, err = strconv.Atoi(string(tok))
		case 9:
			st.Flags, err = strconv.ParseUint(string(tok), 10, 64)
		case 14:
			st.UTime, err = strconv.ParseUint(string(tok), 10, 64)
		case 15:
			st.STime, err = strconv.ParseUint(string(tok), 10, 64)
		case 22:
			st.Start, err = strconv.ParseUint(string(tok), 10, 64)
		}
		if err != nil {
			return st, fmt.Errorf("field %d: %w", field, err)
		}
	}
	return st, nil
}

// ReadStat reads and parses procRoot/PID/stat. The error of a failed read
// is the os error (ENOENT, ESRCH for a process that is gone), wrapped.
func ReadStat(procRoot string, pid int) (Stat, error) {
	path := filepath.Join(procRoot, strconv.Itoa(pid), "stat")
	data, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	st, err := ParseStat(data)
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// CgroupPath finds a process's cgroup in the contents of /proc/PID/cgroup
// ("hierarchy-ID:controllers:path" lines): the cgroup v2 line ("0::"), or
// with v1 the first line whose controllers include freezer. Lines that do
// not have that form are passed over. The path aliases data.
func CgroupPath(data []byte, v1 bool) ([]byte, bool) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		id, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		ctrls, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			continue
		}
		if !v1 {
			if len(ctrls) == 0 && isZero(id) {
				return path, true
			}
			continue
		}
		for c := range bytes.SplitSeq(ctrls, []byte(",")) {
			if string(c) == "freezer" {
				return path, true
			}
		}
	}
	return nil, false
}

func isZero(id []byte) bool {
	n, err := strconv.Atoi(string(id))
	return err == nil && n == 0
}

// V2Path is CgroupPath(data, false) for text: the cgroup v2 path, "" when
// there is no "0::" line.
func V2Path(text string) string {
	p, _ := CgroupPath([]byte(text), false)
	return string(p)
}
