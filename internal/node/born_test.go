package node

import (
	"testing"
	"time"

	"overtime/internal/procstat"
)

func TestSameBorn(t *testing.T) {
	if bornTick != procstat.Tick {
		t.Fatalf("bornTick %v, /proc/PID/stat tick %v", bornTick, procstat.Tick)
	}
	const born = 1234*time.Second + 560*time.Millisecond // on a tick
	for _, tc := range []struct {
		a, b time.Duration
		same bool
	}{
		{born, born, true},
		{born + 9*time.Millisecond, born, true}, // the kernel's ns against the scan's ticks
		{born + bornTick, born, false},
		{born - time.Nanosecond, born, false},
	} {
		if got := SameBorn(tc.a, tc.b); got != tc.same {
			t.Errorf("SameBorn(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
		if procstat.BootToTicks(tc.a) == procstat.BootToTicks(tc.b) != tc.same {
			t.Errorf("SameBorn(%v, %v) disagrees with procstat.BootToTicks", tc.a, tc.b)
		}
	}
}
