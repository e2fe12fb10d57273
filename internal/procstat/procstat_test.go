package procstat

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// tail is fields 3 to 25 of a stat line: state S, ppid 6, flags
// 1077936448, utime 120, stime 30, starttime 987.
const tail = " S 6 6 6 0 -1 1077936448 50 0 0 0 120 30 0 0 20 0 1 0 987 1 1 18446744073709551615\n"

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name string
		line string
		comm string
	}{
		{"plain", "7 (restic)" + tail, "restic"},
		{"space", "7 (restic backup)" + tail, "restic backup"},
		{"parens", "7 ((sd-pam))" + tail, "(sd-pam)"},
		{"close paren and fields", "7 (a) S 1 2 (b)" + tail, "a) S 1 2 (b"},
		{"newline", "7 (x\ny)" + tail, "x\ny"},
		{"newline and paren", "7 (x)\n)" + tail, "x)\n"},
		{"empty", "7 ()" + tail, ""},
		{"16 bytes", "7 (0123456789abcde)" + tail, "0123456789abcde"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ParseStat([]byte(tc.line))
			if err != nil {
				t.Fatal(err)
			}
			if string(st.Comm) != tc.comm || st.State != 'S' || st.PPID != 6 || st.Flags != 1077936448 ||
				st.UTime != 120 || st.STime != 30 || st.Start != 987 {
				t.Errorf("ParseStat(%q) = %+v (comm %q)", tc.line, st, st.Comm)
			}
		})
	}
	// starttime the last field: no trailing space.
	st, err := ParseStat([]byte("7 (x) S 6 6 6 0 -1 0 50 0 0 0 0 0 0 0 20 0 1 0 42\n"))
	if err != nil || st.Start != 42 {
		t.Errorf("ParseStat = %+v, %v; want start 42", st, err)
	}
	for _, line := range []string{
		"",
		"1 (x",
		"1 x) S",
		"1 (x)",
		"1 (x) S 1 1",
		"1 (x) S one 1 1 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 5 1",
		"1 (x) S 1 1 1 0 -1 4194560 120 0 0 0 -3 1 0 0 20 0 1 0 5 1",
		"1 (x) S 1 1 1 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 5x 1",
	} {
		if st, err := ParseStat([]byte(line)); err == nil {
			t.Errorf("ParseStat(%q) = %+v, want an error", line, st)
		}
	}
}

func TestParseStatNoAllocs(t *testing.T) {
	line := []byte("12345 (restic backup) S 1 12345 12345 0 -1 4194560 1234 0 0 0 120 30" + tail)
	if n := testing.AllocsPerRun(100, func() { _, _ = ParseStat(line) }); n != 0 {
		t.Errorf("ParseStat allocates %v times", n)
	}
}

// The state is the main thread's: running, or asleep while another thread
// runs the test.
func TestReadStatSelf(t *testing.T) {
	st, err := ReadStat("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	if string(st.Comm) != strings.TrimSuffix(string(comm), "\n") || !strings.ContainsRune("RS", rune(st.State)) || st.PPID != os.Getppid() || st.Start == 0 {
		t.Errorf("ReadStat(self) = %+v (comm %q), comm file %q", st, st.Comm, comm)
	}
	if _, err := ReadStat(t.TempDir(), 1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadStat of a missing file: %v, want ErrNotExist", err)
	}
}

func TestCgroupPath(t *testing.T) {
	const hybrid = "12:freezer:/v1/frozen\n11:cpu,cpuacct:/v1/cpu\n1:name=systemd:/sd\n0::/v2/path\n"
	for _, tc := range []struct {
		data string
		v1   bool
		want string
		ok   bool
	}{
		{"0::/\n", false, "/", true},
		{"0::/a:b/c\n", false, "/a:b/c", true},
		{"0::/no/newline", false, "/no/newline", true},
		{hybrid, false, "/v2/path", true},
		{hybrid, true, "/v1/frozen", true},
		{"5:cpu,freezer,memory:/v1/path\n0::/v2/path\n", true, "/v1/path", true},
		{"5:freezer:/only/v1\n", false, "", false},
		{"1:name=systemd:/\n", true, "", false},
		{"garbage\n0::/after-garbage\n", false, "/after-garbage", true},
		{"0:cpu:/not-v2\n", false, "", false},
		{"1::/not-zero\n", false, "", false},
		{"0::/../../outside\n", false, "/../../outside", true}, // the caller judges the path
		{"", false, "", false},
		{"", true, "", false},
	} {
		got, ok := CgroupPath([]byte(tc.data), tc.v1)
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("CgroupPath(%q, v1=%v) = %q, %v; want %q, %v", tc.data, tc.v1, got, ok, tc.want, tc.ok)
		}
	}
	if got := V2Path(hybrid); got != "/v2/path" {
		t.Errorf("V2Path = %q", got)
	}
}

func TestTicks(t *testing.T) {
	for _, tc := range []struct {
		d     time.Duration
		ticks uint64
	}{
		{0, 0},
		{9 * time.Millisecond, 0},
		{10 * time.Millisecond, 1},
		{1234567890 * time.Nanosecond, 123},
	} {
		if got := BootToTicks(tc.d); got != tc.ticks {
			t.Errorf("BootToTicks(%v) = %d, want %d", tc.d, got, tc.ticks)
		}
	}
	if got := TicksToBoot(123); got != 1230*time.Millisecond {
		t.Errorf("TicksToBoot(123) = %v", got)
	}
}

func BenchmarkParseStat(b *testing.B) {
	line := []byte("12345 (restic backup) S 1 12345 12345 0 -1 4194560 1234 0 0 0 120 30 0 0 20 0 8 0 987654 123456789 2345 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
	cg := []byte("12:freezer:/a\n11:cpu,cpuacct:/b\n0::/kubepods.slice/kubepods-burstable.slice/x.scope/overtime.restic.1.2\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseStat(line); err != nil {
			b.Fatal(err)
		}
		if _, ok := CgroupPath(cg, false); !ok {
			b.Fatal("no v2 line")
		}
	}
}
