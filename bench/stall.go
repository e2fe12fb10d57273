package main

import (
	"fmt"
	"time"

	"overtime/bpf"
)

// stallCost: the agent's CPU with 1,000 one-process trees (a copy of
// sleep) whose rule has a stall, against the same trees without one, in %
// of a core. The stall is 10s, so every tree is sampled about once a second
// and each one-a-second procfs pass reads all of them: the most sampling a
// rule can ask for (a 30m stall samples each tree every 3 minutes). Both
// agents run in monitor mode on the same processes: an idle sleep is
// stalled, and monitor mode reports it once and samples on, where enforce
// mode would end it and stop sampling. The window starts after every stall
// was reported.
func stallCost(b *bench) error {
	n, d := 1000, 20*time.Second
	if b.quick {
		n, d = 300, 8*time.Second
	}
	const stall = 10 * time.Second
	b.out.section(fmt.Sprintf("8. stall sampling: agent CPU with %d trees (%s), stall %v vs none, over %v", n, engStall, stall, d))
	if err := needPIDs(n); err != nil {
		return err
	}
	l, err := b.subCgroup("stall")
	if err != nil {
		return err
	}
	if _, err := l.startPaced(n, time.Second, b.engine(engStall), "3600"); err != nil {
		return err
	}
	cfg := func(extra string) string {
		return fmt.Sprintf(`mode: monitor
rules:
  - name: ovt-stall
    match: {comm: [%s]}
    timeout: 1h
%s`, engStall, extra)
	}
	measure := func(name, config string, stalls bool) (float64, float64, error) {
		a, err := b.runAgent(name, config)
		if err != nil {
			return 0, 0, err
		}
		defer a.stop()
		limit := time.Now().Add(stall + 30*time.Second)
		for {
			m, err := a.metrics()
			if err != nil {
				return 0, 0, err
			}
			tracked := m.Get(`overtime_tracked_processes{rule="ovt-stall"}`) == float64(n)
			if tracked && (!stalls || m.Get(`overtime_stalls_total{rule="ovt-stall"}`) == float64(n)) {
				break
			}
			if time.Now().After(limit) {
				return 0, 0, fmt.Errorf("%s: %v tracked, %v stalls after %v", name,
					m.Get(`overtime_tracked_processes{rule="ovt-stall"}`), m.Get(`overtime_stalls_total{rule="ovt-stall"}`), stall+30*time.Second)
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
		t0, s0, err := a.cpu()
		if err != nil {
			return 0, 0, err
		}
		w0 := bpf.BootNow()
		time.Sleep(d)
		t1, s1, err := a.cpu()
		if err != nil {
			return 0, 0, err
		}
		wall := bpf.BootNow() - w0
		return float64(t1-t0) / float64(wall) * 100, float64(s1-s0) / float64(wall) * 100, nil
	}
	off, offSched, err := measure("stall-off", cfg(""), false)
	if err != nil {
		return err
	}
	on, onSched, err := measure("stall-on", cfg(fmt.Sprintf("    stall: %v\n", stall)), true)
	if err != nil {
		return err
	}
	b.out.info("stall_cpu_off", fmt.Sprintf("%.3f%%", off), fmt.Sprintf("%% of a core, %d trees, no stall (schedstat %.3f%%)", n, offSched))
	b.out.info("stall_cpu_on", fmt.Sprintf("%.3f%%", on), fmt.Sprintf("%% of a core, %d trees, stall %v: a pass over all each second (schedstat %.3f%%)", n, stall, onSched))
	b.out.info("stall_cpu_per_tree_sample", fmt.Sprintf("%.1f µs", (onSched-offSched)/100*float64(time.Second)/float64(time.Microsecond)/float64(n)),
		"(schedstat on - off) per tree sampled, once a second")
	// The default rules' 30m stall samples each tree every 3 minutes.
	b.out.note("at the default stall (30m, a sample per tree every 3 min) the same %d trees would cost about %.3f%% of a core",
		n, (on-off)*float64(stall/10)/float64(3*time.Minute))
	return nil
}
