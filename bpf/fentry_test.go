//go:build linux

package bpf

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// fentryProbe tells, apart from Load, whether this kernel attaches a
// tracing program: a two-instruction fentry program on do_mkdirat, loaded
// and attached for real. Where it attaches, Load's auto mode must pick
// fentry: a fallback there is a bug (a program the verifier refuses, a
// signature check gone wrong), not the kernel's choice.
var fentryProbe = sync.OnceValue(func() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "do_mkdirat",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
	})
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return err
	}
	return l.Close()
})

// fileTracingModes are the modes the file-record tests run in here: the
// syscall tracepoints everywhere, fentry too where the kernel allows it.
func fileTracingModes(t *testing.T) []FileTracing {
	if err := fentryProbe(); err != nil {
		t.Logf("fentry not available here (%v): the tracepoints alone", err)
		return []FileTracing{FileTracingTracepoint}
	}
	return []FileTracing{FileTracingFentry, FileTracingTracepoint}
}

// forEachFileTracing runs a file-record test once per mode, as subtests.
func forEachFileTracing(t *testing.T, f func(*testing.T, FileTracing)) {
	needRoot(t)
	for _, m := range fileTracingModes(t) {
		t.Run(string(m), func(t *testing.T) { f(t, m) })
	}
}

// TestFileTracingMode checks which mode loads: fentry wherever the kernel
// attaches tracing programs (so it fails if fentry silently falls back
// there), the tracepoints elsewhere with the reason said, and the
// tracepoints whenever they are asked for. With fentry, the programs are
// attached from Load on and a candidate is never held for them.
func TestFileTracingMode(t *testing.T) {
	needRoot(t)
	probeErr := fentryProbe()
	t.Logf("tracing program probe: %v", probeErr)

	tr, err := Load(Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got, why := tr.FileTracing(), tr.FentryUnavailable()
	tr.Close()
	switch {
	case probeErr == nil && got != FileTracingFentry:
		t.Fatalf("auto mode loaded %s where the kernel attaches tracing programs; fentry failed: %v", got, why)
	case probeErr != nil && (got != FileTracingTracepoint || why == nil):
		t.Fatalf("auto mode loaded %s (reason %v) where tracing programs are refused (%v)", got, why, probeErr)
	}
	t.Logf("auto: %s (fentry unavailable: %v)", got, why)

	tr, err = Load(Options{FileTracing: FileTracingTracepoint})
	if err != nil {
		t.Fatalf("Load tracepoint: %v", err)
	}
	if m, why := tr.FileTracing(), tr.FentryUnavailable(); m != FileTracingTracepoint || why != nil {
		t.Errorf("tracepoint mode asked: loaded %s, fentry error %v", m, why)
	}
	if tr.FilesEnabled() {
		t.Error("tracepoint mode: file programs attached at Load")
	}
	tr.Close()

	tr, err = Load(Options{FileTracing: FileTracingFentry})
	if probeErr != nil {
		if err == nil {
			tr.Close()
			t.Fatal("fentry mode asked where tracing programs are refused: Load succeeded")
		}
		if !strings.Contains(err.Error(), "file tracing on fentry") {
			t.Errorf("fentry refused with %q: want it to name file tracing on fentry", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Load fentry: %v", err)
	}
	tr.Close()

	// fentry: attached from Load, kept through DisableFiles, no holds.
	h := newHarnessWith(t, Options{FileTracing: FileTracingFentry}, nil)
	if !h.tr.FilesEnabled() {
		t.Fatal("fentry: file programs not attached at Load")
	}
	if off, err := h.tr.DisableFiles(); !off || err != nil || !h.tr.FilesEnabled() {
		t.Fatalf("fentry: DisableFiles = %v, %v; attached %v: want true, nil, still attached", off, err, h.tr.FilesEnabled())
	}
	dir := t.TempDir()
	sh := copyBinary(t, "/bin/sh", dir, "ovtest-sh")
	if err := h.tr.SetFilter([]string{"ovtest-sh"}, false, nil); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(dir, "first")
	cmd := exec.Command(sh, "-c", `echo x > "$1"`, "sh", first)
	start(t, cmd)
	pid := cmd.Process.Pid
	if !endsWithin(t, cmd, 5*time.Second) {
		t.Fatal("fentry: a candidate was held")
	}
	ex := h.wait(t, "exec", func(r *Record) bool { return r.Type == TypeExec && r.TGID == uint32(pid) })
	if ex.Held {
		t.Fatal("fentry: exec record says held")
	}
	// A candidate is tracked by the kernel from exec: its first file is
	// recorded though user space never decided on it.
	h.wait(t, "the candidate's first file", func(r *Record) bool {
		return r.Type == TypeFile && r.TGID == uint32(pid) && r.FileOp == OpOpen && string(r.Path) == first
	})
	h.tr.Untrack(pid)
	if _, err := os.Lstat(first); err != nil {
		t.Fatal(err)
	}
}
