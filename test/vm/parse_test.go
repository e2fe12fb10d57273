package main

import (
	"strings"
	"testing"
)

// A guest's result port, as init.sh and a test binary run with
// -test.v=test2json write it: the counts, the skip reasons and a test
// binary that died without a failing test all come out.
func TestParseResults(t *testing.T) {
	const m = "\x16"
	out := strings.Join([]string{
		"@@OVT CELL kernel=6.1.0-50-cloud-amd64 cgroup=v2 set=smoke",
		"@@OVT CAPS fentry=yes kprobe=no(no kprobe PMU)",
		"@@OVT STARTED",
		"@@OVT BEGIN enforcer",
		m + "=== RUN   TestA",
		m + "--- PASS: TestA (0.10s)",
		m + "=== RUN   TestB",
		"    cgroup_test.go:12: no cgroup hierarchy at /sys/fs/cgroup/freezer",
		m + "--- SKIP: TestB (0.00s)",
		m + "=== RUN   TestC",
		"    cgroup_test.go:40: tree cgroup holds [1], want [1 2]",
		m + "--- FAIL: TestC (0.20s)",
		m + "FAIL",
		"@@OVT END enforcer rc=1 start=10.5 end=12.0",
		"@@OVT BEGIN bpf",
		m + "=== RUN   TestD",
		"panic: boom",
		"@@OVT END bpf rc=2 start=12.0 end=13.0",
		"@@OVT DONE",
	}, "\n")
	r, err := parseResults([]byte(out), goTest2JSON)
	if err != nil {
		t.Fatal(err)
	}
	if !r.done || !r.started || r.kernelRelease != "6.1.0-50-cloud-amd64" || !strings.HasPrefix(r.caps, "fentry=yes") {
		t.Fatalf("cell: %+v", r)
	}
	if len(r.pkgs) != 2 {
		t.Fatalf("pkgs: %d", len(r.pkgs))
	}
	e := r.pkgs[0]
	if len(e.passed) != 1 || len(e.failed) != 1 || e.skipped["TestB"] != "no cgroup hierarchy at /sys/fs/cgroup/freezer" ||
		e.failures["TestC"] != "tree cgroup holds [1], want [1 2]" || e.rc != 1 || e.seconds != 1.5 {
		t.Fatalf("enforcer: %+v", e)
	}
	c := &cell{k: fetched{kernel: kernels[1]}, layout: "v2", res: r}
	c.finish(true)
	if c.status != "FAIL" || !strings.Contains(c.line, "1 passed, 2 failed, 1 skipped") ||
		!strings.Contains(c.line, "bpf: exit status 2 with no failing test") {
		t.Fatalf("line: %s", c.line)
	}
}

// A documented refusal is its own status; a refusal nobody documented, or
// an agent that starts where a refusal is documented, fails.
func TestRefusals(t *testing.T) {
	// A refusal of the test's own: the list is empty today.
	refusals["6.1/hybrid"] = "invalid access to map value"
	defer delete(refusals, "6.1/hybrid")
	for _, tc := range []struct {
		kernel, layout, refused string
		want                    string
	}{
		{"5.10", "v2", "err=... has no cgroup.kill (needs 5.14)", "FAIL"},
		{"5.10", "v2", "", "PASS"},
		{"5.10", "v1", "err=... BPF_STX uses reserved fields ...", "FAIL"},
		{"6.1", "hybrid", "err=... invalid access to map value ...", "REFUSED"},
		{"6.1", "hybrid", "err=... BPF_STX uses reserved fields ...", "FAIL"},
		{"6.1", "hybrid", "", "FAIL"},
		{"5.10", "hybrid", "", "PASS"},
		{"6.1", "v1", "", "PASS"},
	} {
		r := &cellResult{done: true, started: tc.refused == "", refused: tc.refused}
		if tc.refused == "" {
			r.pkgs = []*pkgResult{{pkg: "bpf", passed: []string{"TestExecFilter"}, ended: true}}
		} else {
			r.pkgs = []*pkgResult{{pkg: "bpf", notRun: true}}
		}
		var k kernel
		for _, x := range kernels {
			if x.name == tc.kernel {
				k = x
			}
		}
		c := &cell{k: fetched{kernel: k}, layout: tc.layout, res: r}
		c.finish(true)
		if c.status != tc.want {
			t.Errorf("%s/%s refused %q: %s, want %s (%s)", tc.kernel, tc.layout, tc.refused, c.status, tc.want, c.line)
		}
	}
}

// A guest that ran no test binary (no plan for its set) fails its cell.
func TestNothingRunFails(t *testing.T) {
	c := &cell{k: fetched{kernel: kernels[0]}, layout: "hybrid", res: &cellResult{done: true, started: true}}
	c.finish(true)
	if c.status != "FAIL" || !strings.Contains(c.line, "ran no test binary") {
		t.Fatalf("%s: %s", c.status, c.line)
	}
}

// The README keeps the agent's error of a refusal, not the log before it.
func TestRefusalText(t *testing.T) {
	in := `time=1 level=INFO msg="enforcer ready" kill=cgroup.kill time=2 level=ERROR msg="overtime stopped on an error" err="eBPF: load program: invalid argument:\n\tBPF_STX uses reserved fields"  ... time=1 level=INFO msg="enforcer ready"`
	want := `err="eBPF: load program: invalid argument: BPF_STX uses reserved fields"`
	if got := refusalText(in); got != want {
		t.Errorf("refusalText = %q, want %q", got, want)
	}
}
