// Command vm runs overtime's real-kernel tests on other kernels and cgroup
// layouts: Debian's 5.10, 6.1 and 6.12 cloud kernels, each booted under
// qemu (TCG: nested KVM is not available on the CI machines) with an
// initramfs it builds (busybox, the test binaries from go test -c, the
// agent, restic), once per cgroup layout (pure v2, pure v1 with the freezer,
// hybrid). Every cell prints one line; the kernel's eBPF capabilities are
// probed and printed per kernel.
//
//	go run ./test/vm -set smoke            # make test
//	go run ./test/vm -set full -readme README.md   # make test-kernels
//
// Kernels are downloaded once into -cache (~/.cache/overtime-vm) through a
// private apt sources list. Nothing on the host is changed: every test runs
// inside a VM.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

//go:embed init.sh
var initScript []byte

// checkConfig is the config of the start-up check in each guest.
const checkConfig = `mode: enforce
rules:
  - name: vm-check
    match: {comm: [ovt-vm-check]}
    timeout: 1m
`

type cell struct {
	k      fetched
	layout string
	err    error // could not be run at all
	res    *cellResult
	took   time.Duration
	status string // PASS, REFUSED, FAIL
	line   string
}

func (c *cell) key() string { return c.k.name + "/" + c.layout }

func main() {
	home, _ := os.UserHomeDir()
	setName := flag.String("set", "smoke", "test set: smoke, full, bpf (the full set's eBPF tracer tests alone) or perf (the bench's getppid target)")
	cache := flag.String("cache", filepath.Join(home, ".cache", "overtime-vm"), "where kernels and builds are kept")
	jobs := flag.Int("j", max(1, runtime.NumCPU()), "cells run at once (each VM has one CPU)")
	only := flag.String("only", "", "run only cells matching KERNEL/LAYOUT globs, comma-separated (e.g. 6.1/v2,5.10/*)")
	readme := flag.String("readme", "", "write the kernel × cgroup table into this README between its vm-matrix markers")
	mem := flag.String("m", "1536", "guest memory (MiB)")
	runOnly := flag.String("run", "", "run only the set's tests matching this regexp (-test.run in every package; no spaces), e.g. to re-run the failures of a cell")
	scale := flag.Float64("time-scale", defaultTimeScale, "factor the guests' tests stretch their time budgets by (OVERTIME_TIME_SCALE): CPU-bound work is many times slower under TCG")
	flag.Parse()
	set, ok := sets[*setName]
	if !ok {
		fmt.Fprintf(os.Stderr, "vm: -set %q: want smoke, full, bpf or perf\n", *setName)
		os.Exit(2)
	}
	if *runOnly != "" {
		if _, err := regexp.Compile(*runOnly); err != nil || strings.ContainsAny(*runOnly, " \t\n") {
			fmt.Fprintf(os.Stderr, "vm: -run %q: want a regexp without spaces (%v)\n", *runOnly, err)
			os.Exit(2)
		}
		// The guests read the plan of their set from the initramfs.
		set.runs = slices.Clone(set.runs)
		for i := range set.runs {
			set.runs[i].run = *runOnly
		}
		sets[set.name] = set
		if *readme != "" {
			fmt.Fprintln(os.Stderr, "vm: -run with -readme: the table is of whole sets")
			os.Exit(2)
		}
	}
	require := os.Getenv("OVERTIME_REQUIRE_TOOLS") != ""
	logf := func(f string, a ...any) { fmt.Printf("vm: "+f+"\n", a...) }
	start := time.Now()

	// What the host needs; a missing piece fails every cell (or skips them
	// loudly when OVERTIME_REQUIRE_TOOLS is not set).
	var cells []*cell
	var setupErr error
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		setupErr = errors.New("qemu-system-x86_64 not found (apt-get install qemu-system-x86; make deps does)")
	}
	var initrd string
	if setupErr == nil {
		initrd, setupErr = buildInitramfs(*cache, set, logf)
	}
	for _, k := range kernels {
		var f fetched
		var kerr error
		if setupErr == nil {
			f, kerr = fetchKernel(*cache, k, logf)
		} else {
			f, kerr = fetched{kernel: k}, setupErr
		}
		for _, l := range layouts {
			c := &cell{k: f, layout: l, err: kerr}
			if match(*only, c.key()) {
				cells = append(cells, c)
			}
		}
	}
	if *scale < 1 || *scale > 100 {
		fmt.Fprintf(os.Stderr, "vm: -time-scale %v: want a number from 1 to 100\n", *scale)
		os.Exit(2)
	}
	logf("set %s: %d cells, %d at once, -m %s, time scale %v, timeout %v per cell (setup %v)", set.name, len(cells), *jobs, *mem, *scale, set.cellTimeout, time.Since(start).Round(time.Second))

	sem := make(chan struct{}, *jobs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range cells {
		if c.err != nil {
			c.finish(require)
			fmt.Println(c.line)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t0 := time.Now()
			c.res, c.err = runCell(qemu, *cache, initrd, c, set, *mem, *scale)
			c.took = time.Since(t0)
			c.finish(require)
			mu.Lock()
			fmt.Println(c.line)
			mu.Unlock()
		}()
	}
	wg.Wait()

	// Capabilities, one line per kernel (from its first cell that got there).
	caps := map[string]string{}
	for _, c := range cells {
		if c.res != nil && c.res.caps != "" && caps[c.k.name] == "" {
			caps[c.k.name] = c.res.kernelRelease + " " + c.res.caps
		}
	}
	for _, k := range kernels {
		if s, ok := caps[k.name]; ok {
			fmt.Printf("vm: kernel %s capabilities: %s\n", k.name, s)
		}
	}
	pass, fail, refused, skipped := 0, 0, 0, 0
	for _, c := range cells {
		switch c.status {
		case "PASS":
			pass++
		case "REFUSED":
			refused++
		case "SKIP":
			skipped++
		default:
			fail++
		}
	}
	total := time.Since(start).Round(time.Second)
	fmt.Printf("vm: set %s: %d cells in %v: %d pass, %d documented refusals, %d fail, %d not run\n", set.name, len(cells), total, pass, refused, fail, skipped)
	if *readme != "" {
		if err := writeReadme(*readme, set, cells, caps, total, *jobs, *scale); err != nil {
			fmt.Fprintln(os.Stderr, "vm:", err)
			os.Exit(1)
		}
		logf("table written to %s", *readme)
	}
	fmt.Printf("vm-matrix: %d passed, %d failed\n", pass+refused, fail)
	if fail > 0 {
		os.Exit(1)
	}
}

func match(only, key string) bool {
	if only == "" {
		return true
	}
	for _, g := range strings.Split(only, ",") {
		if ok, _ := filepath.Match(g, key); ok {
			return true
		}
	}
	return false
}

// finish decides the cell's status and its one line.
func (c *cell) finish(require bool) {
	head := fmt.Sprintf("vm: [%-4s %-6s]", c.k.name, c.layout)
	if c.err != nil && c.res == nil {
		c.status = "FAIL"
		if !require && !errors.Is(c.err, context.DeadlineExceeded) {
			c.status = "SKIP"
			c.line = fmt.Sprintf("%s SKIP (not run: %v; set OVERTIME_REQUIRE_TOOLS=1 to make this a failure)", head, c.err)
			return
		}
		c.line = fmt.Sprintf("%s FAIL not run: %v", head, c.err)
		return
	}
	r := c.res
	var np, nf, ns int
	var skips, fails, times []string
	for _, p := range r.pkgs {
		if p.notRun {
			continue
		}
		np += len(p.passed)
		nf += len(p.failed)
		ns += len(p.skipped)
		for _, t := range sortedKeys(p.skipped) {
			skips = append(skips, fmt.Sprintf("%s: %s", t, p.skipped[t]))
		}
		for _, t := range sortedKeys(p.failures) {
			fails = append(fails, fmt.Sprintf("%s: %s", t, p.failures[t]))
		}
		if p.ended && p.rc != 0 && len(p.failed) == 0 {
			nf++
			fails = append(fails, fmt.Sprintf("%s: exit status %d with no failing test (crash or timeout)", p.pkg, p.rc))
		}
		if !p.ended {
			nf++
			fails = append(fails, fmt.Sprintf("%s: the guest stopped inside it", p.pkg))
		}
		times = append(times, fmt.Sprintf("%s %.0fs", p.pkg, p.seconds))
	}
	var problems []string
	if c.err != nil {
		problems = append(problems, c.err.Error())
	}
	if !r.done {
		problems = append(problems, "the guest did not finish")
	}
	problems = append(problems, r.notes...)
	if r.done && len(r.pkgs) == 0 {
		// A guest that ran nothing has shown nothing: no plan for its set?
		problems = append(problems, "the guest ran no test binary")
	}
	c.status = "PASS"
	state := "agent starts"
	if r.refused != "" {
		want, documented := refusal(c.key())
		if documented && strings.Contains(r.refused, want) {
			c.status = "REFUSED"
			state = "agent refuses as documented: " + r.refused
		} else {
			state = "agent refuses"
			problems = append(problems, "agent refused: "+clip(r.refused, 400))
		}
	} else if want, ok := refusal(c.key()); ok && r.done {
		problems = append(problems, "agent started where it should refuse ("+want+")")
	}
	if nf > 0 || len(problems) > 0 {
		c.status = "FAIL"
	}
	line := fmt.Sprintf("%s %s %d passed, %d failed, %d skipped in %v (%s; %s)", head, c.status, np, nf, ns,
		c.took.Round(time.Second), strings.Join(times, ", "), state)
	if len(fails) > 0 {
		line += "; failed: " + strings.Join(fails, "; ")
	}
	if len(problems) > 0 {
		line += "; " + strings.Join(problems, "; ")
	}
	if len(skips) > 0 {
		line += "; skipped: " + strings.Join(skips, "; ")
	}
	for _, b := range r.bench {
		// The figures and the errors; not the banner.
		if strings.Contains(b, "(") && !strings.HasPrefix(strings.TrimSpace(b), "binary") {
			line += "\n    bench: " + b
		}
		// A measurement the bench could not make fails the cell (a
		// missed target is only reported, as in make bench).
		if strings.HasSuffix(strings.TrimSpace(b), " ERROR") || strings.HasPrefix(b, "bench: ") {
			c.status = "FAIL"
			line = strings.Replace(line, " PASS ", " FAIL ", 1)
		}
	}
	c.line = line
}

// runCell boots one guest and parses what it reported.
func runCell(qemu, cache, initrd string, c *cell, set testSet, mem string, scale float64) (*cellResult, error) {
	dir := filepath.Join(cache, "runs", set.name, strings.ReplaceAll(c.key(), "/", "-"))
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	console, results := filepath.Join(dir, "console.log"), filepath.Join(dir, "results.log")
	ctx, cancel := context.WithTimeout(context.Background(), set.cellTimeout)
	defer cancel()
	args := append([]string{
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", mem,
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", c.k.vmlinuz, "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 loglevel=4 rdinit=/init ovt.cgroup=%s ovt.set=%s ovt.timescale=%v", c.layout, set.name, scale),
		"-serial", "file:" + console, "-serial", "file:" + results}, set.qemuArgs...)
	cmd := exec.CommandContext(ctx, qemu, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v (console in %s): %w", set.cellTimeout, console, ctx.Err())
	} else if err != nil {
		err = fmt.Errorf("qemu: %v: %s", err, strings.TrimSpace(string(out)))
	}
	b, rerr := os.ReadFile(results)
	if rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	res, perr := parseResults(b, goTest2JSON)
	if perr != nil {
		err = errors.Join(err, perr)
	}
	if res != nil && !res.done && err == nil {
		err = fmt.Errorf("the guest stopped before it was done (console in %s)", console)
	}
	return res, err
}

// writeReadme replaces the text between the README's vm-matrix markers.
func writeReadme(path string, set testSet, cells []*cell, caps map[string]string, total time.Duration, jobs int, scale float64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const begin, end = "<!-- vm-matrix:begin -->", "<!-- vm-matrix:end -->"
	i, j := strings.Index(string(b), begin), strings.Index(string(b), end)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s ... %s markers", path, begin, end)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%s\n_Written by `go run ./test/vm -set %s` (%d cells, %v in all, TCG, %d cells at once, time scale %v); each cell: passed / failed / skipped top-level tests, guest wall time._\n\n", begin, set.name, len(cells), total, jobs, scale)
	t.WriteString("| kernel | " + strings.Join(layouts, " | ") + " | eBPF beyond tracepoints |\n|---|---|---|---|---|\n")
	byKey := map[string]*cell{}
	for _, c := range cells {
		byKey[c.key()] = c
	}
	for _, k := range kernels {
		row := []string{k.name}
		pkg := ""
		for _, l := range layouts {
			c := byKey[k.name+"/"+l]
			if c == nil {
				row = append(row, "not run")
				continue
			}
			if c.k.pkg != "" {
				pkg = c.k.pkg
			}
			row = append(row, cellSummary(c))
		}
		row[0] = fmt.Sprintf("%s (`%s`)", k.name, pkg)
		row = append(row, capsSummary(caps[k.name]))
		t.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	t.WriteString("\nSkips and refusals, per cell:\n\n")
	for _, c := range cells {
		if c.res == nil {
			continue
		}
		var notes []string
		if c.res.refused != "" {
			note := "agent refuses: `" + refusalText(c.res.refused) + "`"
			if want, ok := refusal(c.key()); ok && strings.Contains(c.res.refused, want) {
				note = "agent refuses as documented (`" + want + "`): `" + refusalText(c.res.refused) + "`"
			}
			notes = append(notes, note)
		}
		seen := map[string][]string{}
		for _, p := range c.res.pkgs {
			for test, why := range p.skipped {
				seen[why] = append(seen[why], test)
			}
		}
		for _, why := range sortedKeys(seen) {
			sort.Strings(seen[why])
			notes = append(notes, fmt.Sprintf("%s skipped: %s", strings.Join(seen[why], ", "), why))
		}
		if len(notes) > 0 {
			fmt.Fprintf(&t, "- **%s**: %s\n", c.key(), strings.Join(notes, "; "))
		}
	}
	t.WriteString("\nNot run in the guests:\n\n")
	for _, n := range notInVMs {
		fmt.Fprintf(&t, "- %s: %s\n", n[0], n[1])
	}
	out := string(b[:i]) + t.String() + string(b[j:])
	return os.WriteFile(path, []byte(out), 0o644)
}

// refusalText is the agent's error from a refusal line, without the log
// lines before it, cut to a few hundred bytes (a verifier log runs long).
func refusalText(s string) string {
	if i := strings.Index(s, "err="); i >= 0 {
		s = s[i:]
	}
	if i := strings.Index(s, " ... "); i >= 0 {
		s = s[:i]
	}
	return clip(strings.TrimSpace(s), 300)
}

func cellSummary(c *cell) string {
	if c.res == nil {
		return c.status
	}
	var np, nf, ns int
	for _, p := range c.res.pkgs {
		np += len(p.passed)
		nf += len(p.failed)
		ns += len(p.skipped)
	}
	s := fmt.Sprintf("%s %d/%d/%d, %v", c.status, np, nf, ns, c.took.Round(time.Second))
	if c.status == "REFUSED" {
		s = fmt.Sprintf("refused (documented; tracer %d/%d/%d)", np, nf, ns)
	}
	return s
}

var capField = regexp.MustCompile(`(\w+)=(yes|no\(([^)]*)\))`)

func capsSummary(s string) string {
	if s == "" {
		return "not probed"
	}
	var yes, no []string
	for _, m := range capField.FindAllStringSubmatch(s, -1) {
		if m[2] == "yes" {
			yes = append(yes, m[1])
		} else {
			no = append(no, m[1])
		}
	}
	return "yes: " + orNone(yes) + "; no: " + orNone(no)
}

// clip shortens s to n bytes (a verifier log can run to megabytes).
func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\\n\\t", " ")
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
