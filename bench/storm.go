package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// referenceConfig has a rule the kernel cannot prefilter (no comm, no
// literal exe basename), so every exec on the node goes to user space: the
// cost of a tracer that filters nothing in the kernel.
const referenceConfig = `rules:
  - name: reference
    match: {cgroup: ["/nonexistent-*"]}
    timeout: 1h
`

// execStorm: two workers spawn /bin/true as fast as they can, with no
// agent, with overtime on its default rules (the kernel drops every exec:
// no rule matches "true") and with the reference consumer. Modes are
// interleaved round by round, and each figure is the median of the rounds.
func execStorm(b *bench) error {
	rounds, d := 5, 3*time.Second
	if b.quick {
		rounds, d = 2, 2*time.Second
	}
	b.out.section(fmt.Sprintf("1. exec storm: 2 workers x /bin/true, %d rounds of %v per mode, modes interleaved", rounds, d))
	l, err := b.subCgroup("storm")
	if err != nil {
		return err
	}
	modes := []string{"none", "overtime", "reference"}
	rates := map[string][]float64{}
	var lost, refLost, refExecs, spawned float64
	agentCPU := map[string][]float64{}
	for r := range rounds {
		for i := range modes {
			mode := modes[(i+r)%len(modes)]
			var a *agent
			switch mode {
			case "overtime":
				a, err = b.runAgent("storm-default", "")
			case "reference":
				a, err = b.runAgent("storm-reference", referenceConfig)
			}
			if err != nil {
				return err
			}
			var m0 metrics
			var cpu0 time.Duration
			if a != nil {
				time.Sleep(300 * time.Millisecond) // let it settle after start-up
				if m0, err = a.metrics(); err != nil {
					return err
				}
				cpu0, _, _ = a.cpu()
			}
			n, rate, err := storm(l, 2, d)
			if err != nil {
				return err
			}
			rates[mode] = append(rates[mode], rate)
			if a != nil {
				cpu1, _, _ := a.cpu()
				agentCPU[mode] = append(agentCPU[mode], float64(cpu1-cpu0)/float64(d)*100)
				time.Sleep(200 * time.Millisecond) // let the last events land
				m1, err := a.metrics()
				if err != nil {
					return err
				}
				dl := m1.Get("overtime_events_lost_total") - m0.Get("overtime_events_lost_total")
				if mode == "overtime" {
					lost += dl
				} else {
					refLost += dl
					refExecs += m1.Get(`overtime_events_total{type="exec"}`) - m0.Get(`overtime_events_total{type="exec"}`)
					spawned += float64(n)
				}
				a.stop()
			}
		}
	}
	none, ovt, ref := median(rates["none"]), median(rates["overtime"]), median(rates["reference"])
	b.out.info("exec_storm_no_agent", fmt.Sprintf("%.0f execs/s", none), "baseline, rounds "+spread(rates["none"], "%.0f"))
	b.out.info("exec_storm_overtime", fmt.Sprintf("%.0f execs/s", ovt), "default rules, rounds "+spread(rates["overtime"], "%.0f"))
	b.out.info("exec_storm_reference", fmt.Sprintf("%.0f execs/s", ref), "every exec to user space, rounds "+spread(rates["reference"], "%.0f"))
	b.out.check("exec_storm_ratio", fmt.Sprintf("%.3f", ovt/none), "≥ 0.97, overtime/no-agent", ovt/none >= 0.97)
	b.out.info("exec_storm_reference_ratio", fmt.Sprintf("%.3f", ref/none), "reference/no-agent")
	b.out.check("exec_storm_lost_events", fmt.Sprintf("%.0f", lost), "0, overtime_events_lost_total", lost == 0)
	b.out.info("exec_storm_reference_lost", fmt.Sprintf("%.0f", refLost), fmt.Sprintf("reference: %.0f execs on the node reached the agent, the workers ran %.0f", refExecs, spawned))
	b.out.info("exec_storm_agent_cpu", fmt.Sprintf("%.1f%% / %.1f%%", median(agentCPU["overtime"]), median(agentCPU["reference"])),
		"of a core during the storm: overtime / reference")
	return nil
}

// storm runs workers spawn-workers for d in l's cgroup and returns the
// processes they ran and the total rate.
func storm(l *launcher, workers int, d time.Duration) (int, float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	return runWorkers(l, self, workers, "for", d.String(), "/bin/true")
}

// runWorkers runs spawn-worker processes in parallel and sums their
// output: processes run, and the rate (each worker's count over its own
// elapsed time).
func runWorkers(l *launcher, self string, workers int, args ...string) (int, float64, error) {
	type result struct {
		n    int
		rate float64
		err  error
	}
	results := make([]result, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			cmd := l.command(self, append([]string{workerCmd}, args...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				results[i].err = fmt.Errorf("worker: %v: %s", err, stderr.String())
				return
			}
			f := strings.Fields(string(out))
			if len(f) != 2 {
				results[i].err = fmt.Errorf("worker output %q", out)
				return
			}
			n, _ := strconv.Atoi(f[0])
			secs, _ := strconv.ParseFloat(f[1], 64)
			results[i] = result{n: n, rate: float64(n) / secs}
		})
	}
	wg.Wait()
	total, rate := 0, 0.0
	var errs []error
	for _, r := range results {
		total += r.n
		rate += r.rate
		errs = append(errs, r.err)
	}
	return total, rate, errors.Join(errs...)
}

// matchingStorm: 10,000 short-lived processes that match a rule, run by
// four workers as fast as they go. Every exec must reach the agent, none
// may be lost, and the table must be empty afterwards.
func matchingStorm(b *bench) error {
	total, workers := 10000, 4
	if b.quick {
		total = 2000
	}
	b.out.section(fmt.Sprintf("2. matching storm: %d short-lived %s scripts, %d workers", total, engBench, workers))
	l, err := b.subCgroup("match")
	if err != nil {
		return err
	}
	cfg := `limits: {max_tracked_processes: 20000}
rules:
  - name: ovt-bench
    match: {comm: [` + engBench + `]}
    timeout: 1h
`
	a, err := b.runAgent("match", cfg)
	if err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	m0, err := a.metrics()
	if err != nil {
		return err
	}
	cpu0, _, _ := a.cpu()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	began := time.Now()
	n, _, err := runWorkers(l, self, workers, "count", strconv.Itoa(total/workers), b.engine(engBench))
	if err != nil {
		return err
	}
	spawnTime := time.Since(began)
	// Wait for the table to drain: every tree ended and reaped.
	procs, drain, err := a.waitEmpty(60*time.Second, 50*time.Millisecond)
	if err != nil {
		return err
	}
	cpu1, _, _ := a.cpu()
	m1, err := a.metrics()
	if err != nil {
		return err
	}
	execs := m1.Get(`overtime_events_total{type="exec"}`) - m0.Get(`overtime_events_total{type="exec"}`)
	lost := m1.Get("overtime_events_lost_total") - m0.Get("overtime_events_lost_total")
	ended := 0.0
	for _, o := range []string{"exited", "failed", "killed"} {
		ended += m1.Get(`overtime_process_runtime_seconds_count{outcome="` + o + `",rule="ovt-bench"}`)
	}
	b.out.info("match_storm_rate", fmt.Sprintf("%.0f procs/s", float64(n)/spawnTime.Seconds()),
		fmt.Sprintf("%d processes in %v", n, spawnTime.Round(time.Millisecond)))
	b.out.check("match_storm_exec_events", fmt.Sprintf("%.0f", execs), fmt.Sprintf("≥ %d, every exec seen", n), execs >= float64(n))
	b.out.check("match_storm_lost_events", fmt.Sprintf("%.0f", lost), "0", lost == 0)
	b.out.check("match_storm_table_after", fmt.Sprintf("%d processes", len(procs)),
		fmt.Sprintf("0, drained %v after the last exit", drain.Round(time.Millisecond)), len(procs) == 0)
	b.out.info("match_storm_trees_ended", fmt.Sprintf("%.0f", ended), "runtime histogram count, all outcomes")
	b.out.info("match_storm_agent_cpu", fmt.Sprintf("%.0f µs/process", float64(cpu1-cpu0)/float64(time.Microsecond)/float64(n)),
		fmt.Sprintf("agent utime+stime %v for %d processes", (cpu1-cpu0).Round(time.Millisecond), n))
	if left := treeCgroups(l.dir); len(left) > 0 {
		b.out.note("%d tree cgroups left under %s", len(left), l.path)
	}
	if r := a.foreignReleases(); r > 0 {
		b.out.note("this agent released %d tree cgroups of another agent on the node", r)
	}
	return nil
}
