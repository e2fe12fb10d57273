package treename

import (
	"fmt"
	"testing"
	"time"
)

func TestFormatParse(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		pid   int
		start time.Duration
		name  string
	}{
		{"restic", 100, 1000 * time.Second, "overtime.restic.100.1000000000000"},
		{"longhorn-nfs-mount", 4242, 123456789 * time.Microsecond, "overtime.longhorn-nfs-mount.4242.123456789000"},
		{"r2", 1, 0, "overtime.r2.1.0"},
	} {
		name := Format(tc.rule, tc.pid, tc.start)
		if name != tc.name {
			t.Errorf("Format(%q, %d, %v) = %q, want %q", tc.rule, tc.pid, tc.start, name, tc.name)
		}
		// The form the old Sprintf wrote, byte for byte.
		if old := fmt.Sprintf("%s.%s.%d.%d", Prefix, tc.rule, tc.pid, tc.start.Nanoseconds()); name != old {
			t.Errorf("Format = %q, Sprintf form %q", name, old)
		}
		r, pid, start, ok := Parse(name)
		if !ok || r != tc.rule || pid != tc.pid || start != tc.start {
			t.Errorf("Parse(%q) = %q %d %v %v", name, r, pid, start, ok)
		}
	}
	for _, bad := range []string{
		"", "overtime", "overtime.", "overtime.a.b.c", "overtime.a.1", "other.a.1.2", "overtime.A.1.2",
		"overtime.a.-1.2", "overtime.a.0.2", "overtime.a.1.-2", "overtime.a.1.2.3", "overtime..1.2",
		"overtime.a_b.1.2", "overtimex.a.1.2", "ovtestenf.enftest.1.2",
	} {
		if r, pid, start, ok := Parse(bad); ok {
			t.Errorf("Parse(%q) = %q %d %v, accepted", bad, r, pid, start)
		}
	}
}

func TestValidRule(t *testing.T) {
	for s, want := range map[string]bool{
		"restic": true, "longhorn-nfs-mount": true, "r2": true, "-": true,
		"": false, "Restic": false, "a.b": false, "a b": false, "a_b": false, "ä": false, "a/b": false,
	} {
		if got := ValidRule(s); got != want {
			t.Errorf("ValidRule(%q) = %v, want %v", s, got, want)
		}
	}
}
