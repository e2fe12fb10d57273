package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"overtime/agent"
)

func cmdPs(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "http://"+agent.DefaultListen, "the agent's address (its listen address, as a URL)")
	format := fs.String("o", "table", "output: table, wide or json")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "overtime ps: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	switch *format {
	case "table", "wide", "json":
	default:
		fmt.Fprintf(stderr, "overtime ps: -o %q: use table, wide or json\n", *format)
		return exitUsage
	}
	base := *addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	url := strings.TrimRight(base, "/") + "/api/v1/processes"
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "overtime ps: cannot reach the agent at %s: %v\n", base, err)
		return exitFailure
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "overtime ps: %s answered %s %v\n", url, resp.Status, err)
		return exitFailure
	}
	var procs []agent.ProcessInfo
	if err := json.Unmarshal(body, &procs); err != nil {
		fmt.Fprintf(stderr, "overtime ps: %s: not a process list: %v\n", url, err)
		return exitFailure
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(procs)
		return exitOK
	}
	printTable(stdout, procs, *format == "wide", time.Now())
	return exitOK
}

func printTable(w io.Writer, procs []agent.ProcessInfo, wide bool, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "PID\tRULE\tCOMM\tAGE\tDEADLINE-IN\tSTATE\tPOD"
	if wide {
		head += "\tCONTAINER\tOPEN\tCREATED\tCGROUP\tARGS"
	}
	fmt.Fprintln(tw, head)
	for _, p := range procs {
		pod := p.PodUID
		if pod == "" {
			pod = "-"
		}
		line := fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%s\t%s", p.PID, p.Rule, p.Comm,
			short(time.Duration(p.RuntimeSeconds*float64(time.Second))), short(p.Deadline.Sub(now)), p.State, pod)
		if wide {
			ctr := p.ContainerID
			if len(ctr) > 12 {
				ctr = ctr[:12]
			}
			if ctr == "" {
				ctr = "-"
			}
			line += fmt.Sprintf("\t%s\t%d\t%d\t%s\t%s", ctr, len(p.OpenFiles), len(p.CreatedFiles), p.Cgroup, strings.Join(p.Args, " "))
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

// short renders a duration the way kubectl does: 45s, 3m12s, 2h5m, 3d4h;
// a negative one (a deadline already passed) with a leading minus.
func short(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%s%ds", sign, int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%s%dm%ds", sign, int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%s%dh%dm", sign, int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%s%dd%dh", sign, int(d.Hours())/24, int(d.Hours())%24)
}
