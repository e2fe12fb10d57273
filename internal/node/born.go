package node

import "time"

// bornTick is the resolution of a start time read from procfs: one
// /proc/PID/stat clock tick (USER_HZ, 100 on every architecture overtime
// runs on; procstat.Tick, which this package, a leaf, does not import).
const bornTick = time.Second / 100

// SameBorn reports whether two start times name the same process start.
// The kernel's records carry start_boottime in nanoseconds, a procfs scan
// only clock ticks (10 ms): they are compared at tick resolution, the way
// /proc/PID/stat rounds (down). With the PID, that still tells a reused
// PID from the process that held it before.
func SameBorn(a, b time.Duration) bool {
	return a/bornTick == b/bornTick
}
