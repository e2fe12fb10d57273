//go:build linux

package bpf

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"

	"overtime/internal/testtool"
)

// TestGeneratedUpToDate regenerates the bpf2go outputs into a temp dir with
// the go:generate line of gen.go and fails if the committed ones differ.
// Without clang it skips, unless OVERTIME_REQUIRE_CLANG or
// OVERTIME_REQUIRE_TOOLS is set (make check-generated, make test).
func TestGeneratedUpToDate(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		if os.Getenv("OVERTIME_REQUIRE_CLANG") != "" {
			t.Fatalf("clang not found and OVERTIME_REQUIRE_CLANG is set: %v", err)
		}
		testtool.Skip(t, "clang not found: %v", err)
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args, err := splitArgs(rest)
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, args)
		}
	}
	if lines == nil {
		t.Fatal("no go:generate bpf2go line in gen.go")
	}
	out := t.TempDir()
	var files []string
	for _, args := range lines {
		// Run from this directory, as go generate does, so debug paths match.
		cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
		cmd.Env = append(os.Environ(), "GOPACKAGE=bpf")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bpf2go: %v\n%s", err, b)
		}
		// The identifier is the next to last argument: IDENT SOURCE.
		ident := args[len(args)-2]
		files = append(files, ident+"_bpfel.go", ident+"_bpfel.o")
	}
	for _, f := range files {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("committed %s: %v", f, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./bpf", f)
		}
	}
}

// splitArgs splits a command line on spaces, honouring double quotes.
func splitArgs(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case r == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if inQuote {
		return nil, os.ErrInvalid
	}
	if have {
		args = append(args, cur.String())
	}
	return args, nil
}

// TestNoAtomicsPast510 checks the committed objects for BPF atomic
// operations other than the old XADD (BPF_ADD without BPF_FETCH): the
// others (fetch forms, or, and, xor, xchg, cmpxchg) are refused before
// kernel 5.12 ("BPF_STX uses reserved fields"), and nodes run 5.10.
func TestNoAtomicsPast510(t *testing.T) {
	spec, err := loadOvertime()
	if err != nil {
		t.Fatal(err)
	}
	fspec, err := loadFentry()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	progs := maps.Clone(spec.Programs)
	maps.Copy(progs, fspec.Programs)
	for name, p := range progs {
		for i, ins := range p.Instructions {
			if ins.OpCode.Class() != asm.StXClass || ins.OpCode.Mode() != asm.AtomicMode {
				continue
			}
			n++
			if op := ins.OpCode.AtomicOp(); op != asm.AddAtomic {
				t.Errorf("%s: instruction %d (%v): atomic %v needs kernel 5.12; use a BPF_NOEXIST map insert or __sync_fetch_and_add with its result unused", name, i, ins, op)
			}
		}
	}
	t.Logf("%d programs, %d XADD instructions", len(progs), n)
}
