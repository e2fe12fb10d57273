// Command bench measures overtime on this machine against the targets of
// issue 8: the cost of the agent under an exec storm, a storm of matching
// processes, kill latency (against a naive 1 s procfs poller), memory per
// tracked process, start-up time, idle CPU and a mass deadline; and the
// agent's CPU when 1,000 trees are sampled for stalls (issue 16); kill
// latency while other trees' cleanups run (issue 14); the getppid rate
// of the node with one engine tracked against an idle agent, and how long
// the kernel holds a new engine at exec against an unheld exec (issue 17);
// and the kill tail of 1,000 trees and of 10,000 processes with -load CPU
// hogs (default 2) running beside them, each against the same run
// without hogs.
//
// It runs as root (`make bench`), starts the real agent binary, and starts
// every process it measures itself, inside a cgroup of its own
// (overtime-bench-*) that it kills and removes at the end, even on error.
// It prints one line per figure, `NAME VALUE (target) VERDICT`, where the
// verdict is OK or MISS for a target and info for a baseline. Machines are
// noisy: figures are medians of repeated runs, and every ratio is against a
// baseline measured in the same run. A missed target is reported, not
// fatal; the exit status is non-zero only when a measurement could not be
// made at all.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// A target is one measurement of the suite, run in order.
type target struct {
	name string
	run  func(*bench) error
	// bare: the target needs no bench cgroup (it starts single processes
	// and ends them through their pidfds), so it runs where the bench
	// cannot make one: cgroup v1, or v2 before cgroup.kill (5.14).
	bare bool
}

var targets = []target{
	{"storm", execStorm, false},
	{"match", matchingStorm, false},
	{"kill", killLatency, false},
	{"memory", memoryAndKill10k, false},
	{"startup", startUp, false},
	{"idle", idle, false},
	{"mass", massDeadline, false},
	{"stall", stallCost, false},
	{"cleanup", killWithCleanup, false},
	{"getppid", getppidRatio, true},
	{"hold", holdRounds, false},
	{"load", killUnderLoad, false},
}

func main() {
	if isProbe() {
		os.Exit(probeMain())
	}
	if len(os.Args) > 1 && os.Args[1] == workerCmd {
		os.Exit(spawnWorker(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == hogCmd {
		os.Exit(cpuHog(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	agentBin := flag.String("agent", "bin/overtime", "the overtime binary to measure")
	only := flag.String("only", "", "comma-separated targets to run (default all): "+targetNames())
	quick := flag.Bool("quick", false, "fewer rounds and processes (a smoke run, figures are rougher)")
	heapProfile := flag.String("heapprofile", "", "write the agent's heap profile with 10,000 tracked processes to this file (memory target)")
	load := flag.Int("load", 2, "CPU hogs beside the kills of the load target (0 turns the target off)")
	flag.Parse()
	if *load < 0 {
		fmt.Fprintln(os.Stderr, "bench: -load: want 0 or more hogs")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root: it loads eBPF programs through the agent, makes cgroups and kills its own processes")
		return 2
	}
	selected, err := selectTargets(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	b, err := newBench(*agentBin, *quick)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	b.heapProfile = *heapProfile
	b.load = *load
	// SIGINT/SIGTERM: kill what was started, remove the cgroup, then go.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", s)
		b.close()
		os.Exit(1)
	}()
	defer b.close()

	b.header()
	began := time.Now()
	failed := 0
	for _, t := range selected {
		if b.cg == nil && !t.bare {
			failed++
			b.out.errorLine(t.name, fmt.Errorf("needs the bench cgroup: %w", b.noCgroup))
			continue
		}
		if err := b.runTarget(t); err != nil {
			failed++
			b.out.errorLine(t.name, err)
		}
	}
	b.footer(time.Since(began))
	if failed > 0 {
		return 1
	}
	return 0
}

func targetNames() string {
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.name
	}
	return strings.Join(names, ",")
}

func selectTargets(only string) ([]target, error) {
	if only == "" {
		return targets, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		want[strings.TrimSpace(n)] = true
	}
	var out []target
	for _, t := range targets {
		if want[t.name] {
			out = append(out, t)
			delete(want, t.name)
		}
	}
	for n := range want {
		return nil, fmt.Errorf("-only: unknown target %q (have %s)", n, targetNames())
	}
	return out, nil
}
