package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"overtime/bpf"
)

// The hold probes: the same program under two names, one a rule matches
// (the kernel holds it at exec while file tracing is off) and one no rule
// has (never held): the baseline.
const (
	engHold   = "ovt-hold"
	engNoHold = "ovt-nohold"
)

// holdRounds: exec to first instruction, as seen by the process (issue
// 17): the kernel stops a new candidate at exec while the file syscall
// tracepoints are detached, until the agent has attached them and resumes
// it. Measured (a) for the first candidate after the agent's start (a
// fresh agent each round, just ready) and (b) for a candidate after file
// tracing went idle and its detach finished, each against the exec of the
// same program under a name no rule matches, in the same state of the same
// agent, just before. The agent runs in tracepoint mode (fentry holds
// nothing): the case the hold exists for.
func holdRounds(b *bench) error {
	rounds := 7
	if b.quick {
		rounds = 3
	}
	b.out.section(fmt.Sprintf("10. exec to first instruction of a held engine vs an unheld exec (tracepoint mode, %d rounds each)", rounds))
	if err := b.writeProbes(); err != nil {
		return err
	}
	l, err := b.subCgroup("hold")
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`mode: enforce
rules:
  - name: ovt-hold
    match: {comm: [%s]}
    timeout: 1h
`, engHold)
	pair := func() (held, base time.Duration, err error) {
		if base, err = l.probe(b.engine(engNoHold)); err != nil {
			return 0, 0, err
		}
		held, err = l.probe(b.engine(engHold))
		return held, base, err
	}
	filesOff := func(m metrics) bool {
		return m.Get("overtime_file_tracing") == 0 && m.Get(`overtime_tracked_processes{rule="ovt-hold"}`) == 0
	}

	// (a) The first candidate after start.
	var firstHeld, firstBase, firstDiff []float64
	for range rounds {
		a, err := b.runAgent("hold-first", config, "--file-tracing", "tracepoint")
		if err != nil {
			return err
		}
		held, base, err := pair()
		a.stop()
		if err != nil {
			return err
		}
		firstHeld = append(firstHeld, msf(held))
		firstBase = append(firstBase, msf(base))
		firstDiff = append(firstDiff, msf(held-base))
	}

	// (b) After idle: file tracing detached after 1 s with nothing
	// tracked, and the detach's link closes done.
	a, err := b.runAgent("hold-idle", config, "--file-tracing", "tracepoint", "--file-tracing-idle", "1s")
	if err != nil {
		return err
	}
	defer a.stop()
	var idleHeld, idleBase, idleDiff []float64
	for range rounds {
		if _, err := a.waitMetric(20*time.Second, filesOff); err != nil {
			return fmt.Errorf("file tracing not idle: %w", err)
		}
		// The links close in the background, one at a time, about 3 s
		// for the set.
		time.Sleep(holdDetachSettle)
		held, base, err := pair()
		if err != nil {
			return err
		}
		idleHeld = append(idleHeld, msf(held))
		idleBase = append(idleBase, msf(base))
		idleDiff = append(idleDiff, msf(held-base))
	}
	// (c) During a detach: a candidate 300 ms after file tracing went
	// off, while its links are being closed (each close holds the
	// kernel's trace event lock for RCU grace periods).
	var midHeld []float64
	for range rounds {
		if _, err := a.waitMetric(20*time.Second, filesOff); err != nil {
			return fmt.Errorf("file tracing not idle: %w", err)
		}
		time.Sleep(holdMidDetach)
		held, err := l.probe(b.engine(engHold))
		if err != nil {
			return err
		}
		midHeld = append(midHeld, msf(held))
	}
	m, err := a.metrics()
	if err != nil {
		return err
	}
	expired := m.Get("overtime_holds_expired_total")

	mf, mi := median(firstHeld), median(idleHeld)
	b.out.check("hold_first_after_start", fmt.Sprintf("%.2f ms", mf), "<= 50 ms", mf <= 50)
	b.out.info("hold_first_unheld_baseline", fmt.Sprintf("%.2f ms", median(firstBase)), "the same exec, a name no rule has")
	b.out.info("hold_first_ratio", fmt.Sprintf("%.2f", mf/median(firstBase)), fmt.Sprintf("held / unheld; held %.2f ms longer (median of rounds)", median(firstDiff)))
	b.out.check("hold_after_idle", fmt.Sprintf("%.2f ms", mi), "<= 10 ms", mi <= 10)
	b.out.info("hold_after_idle_unheld_baseline", fmt.Sprintf("%.2f ms", median(idleBase)), "the same exec, a name no rule has")
	b.out.info("hold_after_idle_ratio", fmt.Sprintf("%.2f", mi/median(idleBase)), fmt.Sprintf("held / unheld; held %.2f ms longer (median of rounds)", median(idleDiff)))
	b.out.info("hold_during_detach", fmt.Sprintf("%.2f ms", median(midHeld)), fmt.Sprintf("a candidate %v into the detach of the file tracepoints", holdMidDetach))
	b.out.check("hold_expired", fmt.Sprintf("%.0f", expired), "0: every hold decided by the agent", expired == 0)
	b.out.note("exec to first instruction: the parent reads CLOCK_BOOTTIME before fork+exec, the probe (%s) at its first instruction", probeKind())
	b.out.note("first after start, ms per round: held %s, unheld %s", spread(firstHeld, "%.2f"), spread(firstBase, "%.2f"))
	b.out.note("after idle, ms per round: held %s, unheld %s; during a detach: held %s", spread(idleHeld, "%.2f"), spread(idleBase, "%.2f"), spread(midHeld, "%.2f"))
	return nil
}

// holdDetachSettle is how long the after-idle rounds wait, once file
// tracing is off, for the background closes of its links.
const holdDetachSettle = 4 * time.Second

// holdMidDetach is when, after file tracing went off, the during-detach
// rounds exec their candidate.
const holdMidDetach = 300 * time.Millisecond

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// probe runs path, a hold probe, in the launcher's cgroup and returns the
// time from just before its fork+exec to its first instruction, both on
// the boot clock.
func (l *launcher) probe(path string) (time.Duration, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	c, err := l.startWith(w.Fd(), path)
	w.Close()
	if err != nil {
		return 0, err
	}
	var buf [16]byte
	_, err = io.ReadFull(r, buf[:])
	<-c.done
	if err != nil {
		return 0, fmt.Errorf("probe %s: read its clock: %w (status %v)", path, err, c.status)
	}
	at := time.Duration(binary.LittleEndian.Uint64(buf[:8]))*time.Second + time.Duration(binary.LittleEndian.Uint64(buf[8:]))
	return at - c.forked, nil
}

// probeKind says what the probes are.
func probeKind() string {
	if runtime.GOARCH == "amd64" {
		return fmt.Sprintf("a %d-byte static program whose first instruction reads the clock", len(probeELF()))
	}
	return "a copy of the bench, after the Go runtime's start: its few hundred microseconds are in the baseline too"
}

// writeProbes writes the two probes into the scratch directory.
func (b *bench) writeProbes() error {
	var data []byte
	if runtime.GOARCH == "amd64" {
		data = probeELF()
	} else {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		if data, err = os.ReadFile(self); err != nil {
			return err
		}
	}
	for _, name := range []string{engHold, engNoHold} {
		if err := os.WriteFile(b.engine(name), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// isProbe reports whether the bench runs as a hold probe (the copy used
// where no static probe is written).
func isProbe() bool {
	n := filepath.Base(os.Args[0])
	return n == engHold || n == engNoHold || strings.HasPrefix(n, engHold+".")
}

// probeMain is the copy's whole work: write the boot clock to stdout as
// the static probe does (seconds, nanoseconds, little endian).
func probeMain() int {
	now := bpf.BootNow()
	var buf [16]byte
	binary.LittleEndian.PutUint64(buf[:8], uint64(now/time.Second))
	binary.LittleEndian.PutUint64(buf[8:], uint64(now%time.Second))
	if _, err := syscall.Write(1, buf[:]); err != nil {
		return 1
	}
	return 0
}

// probeELF is a static x86-64 executable (no libc, no loader) whose first
// instructions read CLOCK_BOOTTIME and write the struct timespec to
// stdout, then exit.
func probeELF() []byte {
	const base, hdr = 0x400000, 64 + 56
	code := []byte{
		0x48, 0x83, 0xec, 0x10, // sub rsp, 16
		0xb8, 0xe4, 0x00, 0x00, 0x00, // mov eax, 228 (clock_gettime)
		0xbf, 0x07, 0x00, 0x00, 0x00, // mov edi, 7 (CLOCK_BOOTTIME)
		0x48, 0x89, 0xe6, // mov rsi, rsp
		0x0f, 0x05, // syscall
		0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1 (write)
		0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, 1
		0x48, 0x89, 0xe6, // mov rsi, rsp
		0xba, 0x10, 0x00, 0x00, 0x00, // mov edx, 16
		0x0f, 0x05, // syscall
		0xb8, 0xe7, 0x00, 0x00, 0x00, // mov eax, 231 (exit_group)
		0x31, 0xff, // xor edi, edi
		0x0f, 0x05, // syscall
	}
	size := uint64(hdr + len(code))
	le := binary.LittleEndian
	b := []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	b = le.AppendUint16(b, 2)    // ET_EXEC
	b = le.AppendUint16(b, 0x3e) // EM_X86_64
	b = le.AppendUint32(b, 1)
	b = le.AppendUint64(b, base+hdr) // entry
	b = le.AppendUint64(b, 64)       // program headers
	b = le.AppendUint64(b, 0)        // no section headers
	b = le.AppendUint32(b, 0)
	b = le.AppendUint16(b, 64)
	b = le.AppendUint16(b, 56)
	b = le.AppendUint16(b, 1)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, 1) // PT_LOAD
	b = le.AppendUint32(b, 5) // R+X
	b = le.AppendUint64(b, 0)
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, size)
	b = le.AppendUint64(b, size)
	b = le.AppendUint64(b, 0x1000)
	return append(b, code...)
}
