package agent

import (
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Descriptors of the gauges built at scrape time from a snapshot of the
// process table (node_exporter style): they can never disagree with the
// table, and series of a process vanish with it.
var (
	trackedDesc = prometheus.NewDesc("overtime_tracked_processes",
		"Processes tracked now (alive), by rule.", []string{"rule"}, nil)
	overdueDesc = prometheus.NewDesc("overtime_overdue_processes",
		"Tracked processes past their deadline and still alive, by rule.", []string{"rule"}, nil)
	orphanedDesc = prometheus.NewDesc("overtime_orphaned_processes",
		"Tracked processes still alive after the process that started them exited, by rule.", []string{"rule"}, nil)
	zombieDesc = prometheus.NewDesc("overtime_zombie_processes",
		"Tracked processes that exited and were never reaped by their parent, by rule.", []string{"rule"}, nil)
	unkillableDesc = prometheus.NewDesc("overtime_unkillable_processes",
		"Tracked processes still alive some seconds after SIGKILL (uninterruptible sleep), by rule.", []string{"rule"}, nil)
	overdueInfoDesc = prometheus.NewDesc("overtime_overdue_process_info",
		"One series per overdue process still alive (value 1); it goes away with the process.",
		[]string{"rule", "pid", "comm", "pod_uid", "container_id"}, nil)
)

// Metrics holds the agent's own series, registered on the registry it is
// given (never the default one).
type Metrics struct {
	capped         *prometheus.CounterVec
	runtime        *prometheus.HistogramVec
	timeouts       *prometheus.CounterVec
	stalls         *prometheus.CounterVec
	kills          *prometheus.CounterVec
	killLatency    *prometheus.HistogramVec
	removedFiles   *prometheus.CounterVec
	removedBytes   *prometheus.CounterVec
	cleanupSkipped *prometheus.CounterVec
	cleanupErrors  *prometheus.CounterVec
	events         *prometheus.CounterVec
	lost           prometheus.Counter
	resyncs        prometheus.Counter
	limitHits      *prometheus.CounterVec
	unconfined     *prometheus.CounterVec
	fileTracing    prometheus.Gauge
	// fileTracingMode: 1 for the mode the file programs run in.
	fileTracingMode *prometheus.GaugeVec
	buildInfo       *prometheus.GaugeVec
}

// BuildInfo names the running binary.
type BuildInfo struct {
	Version, Commit, GoVersion string
}

// NewMetrics creates the agent's metrics and registers them on reg, with a
// collector that reads the table t at scrape time (t may be nil, for a
// registry that only describes).
func NewMetrics(reg prometheus.Registerer, bi BuildInfo) *Metrics {
	m := &Metrics{
		capped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_capped_total",
			Help: "Processes ended at exec because their rule's max_running was reached.",
		}, []string{"rule"}),
		runtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "overtime_process_runtime_seconds",
			Help:    "Run time of tracked process trees, observed when the tree ends.",
			Buckets: []float64{0.1, 1, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600},
		}, []string{"rule", "outcome"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_timeouts_total",
			Help: "Process trees that reached their deadline.",
		}, []string{"rule"}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_stalls_total",
			Help: "Process trees that made no progress (no bytes read or written, under 1% of a CPU) for their rule's stall.",
		}, []string{"rule"}),
		kills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_kills_total",
			Help: "Signals sent (or, in monitor mode, not sent) to overdue process trees.",
		}, []string{"rule", "signal", "result"}),
		killLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "overtime_kill_latency_seconds",
			Help:    "Time from deadline + grace to the confirmed exit of the whole tree.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"rule"}),
		removedFiles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_cleanup_removed_files_total",
			Help: "Files, symlinks and empty directories removed after their tree ended.",
		}, []string{"rule"}),
		removedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_cleanup_removed_bytes_total",
			Help: "Bytes of regular files removed by cleanup.",
		}, []string{"rule"}),
		cleanupSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_cleanup_skipped_total",
			Help: "Entries cleanup left alone, by reason.",
		}, []string{"rule", "reason"}),
		cleanupErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_cleanup_errors_total",
			Help: "Cleanup removals that failed with an error.",
		}, []string{"rule"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_events_total",
			Help: "Events received from the kernel, by type.",
		}, []string{"type"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "overtime_events_lost_total",
			Help: "Events the kernel dropped because the ring buffer was full.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "overtime_resyncs_total",
			Help: "Procfs rescans made to reconcile the table after lost events.",
		}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_limit_hits_total",
			Help: "Things not tracked because a configured limit was reached, by limit.",
		}, []string{"limit"}),
		unconfined: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "overtime_unconfined_processes_total",
			Help: "Tracked processes that could not be moved into their tree's cgroup (ended through pidfds instead).",
		}, []string{"rule"}),
		fileTracing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "overtime_file_tracing",
			Help: "1 while file tracing is on (something is tracked, or a rule cannot be prefiltered), else 0; in tracepoint mode the file syscall tracepoints are attached exactly then, fentry programs stay attached.",
		}),
		fileTracingMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "overtime_file_tracing_mode",
			Help: "1 for how the kernel side records file changes: fentry (on the kernel's file functions, no cost to other syscalls) or tracepoint (the syscall tracepoints, where the kernel refuses fentry).",
		}, []string{"mode"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "overtime_build_info",
			Help: "The running overtime build (value 1).",
		}, []string{"version", "commit", "goversion"}),
	}
	for _, t := range []string{"exec", "fork", "exit", "file"} {
		m.events.WithLabelValues(t)
	}
	m.buildInfo.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	reg.MustRegister(m.capped, m.runtime, m.timeouts, m.stalls, m.kills, m.killLatency,
		m.removedFiles, m.removedBytes, m.cleanupSkipped, m.cleanupErrors,
		m.events, m.lost, m.resyncs, m.limitHits, m.unconfined, m.fileTracing, m.fileTracingMode, m.buildInfo)
	return m
}

// MetricNames lists the name of every metric family the agent exports,
// from the descriptors registered (so dashboards and alerts are checked
// against what the agent really serves).
func MetricNames() []string {
	reg := prometheus.NewRegistry()
	NewMetrics(reg, BuildInfo{})
	reg.MustRegister(&tableCollector{}, scanCollector{})
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	seen := map[string]bool{}
	for d := range ch {
		seen[descName(d)] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// descName reads a descriptor's name from its String form,
// `Desc{fqName: "name", ...}`: client_golang has no getter for it.
func descName(d *prometheus.Desc) string {
	_, rest, _ := strings.Cut(d.String(), `fqName: "`)
	name, _, _ := strings.Cut(rest, `"`)
	return name
}

// tableCollector builds the table gauges at scrape time.
// scanSkippedDesc counts what procfs scans could not read: a process left
// out of a scan is not tracked until its next event, and an operator should
// see why.
var scanSkippedDesc = prometheus.NewDesc("overtime_scan_skipped_processes_total",
	"Processes that procfs scans (start-up, resync) left out because they could not be read, other than by exiting.", nil, nil)

var holdsExpiredDesc = prometheus.NewDesc("overtime_holds_expired_total",
	"Processes the kernel stopped at exec that were resumed at the hold bound because the agent did not decide in time (it was down or stalled).", nil, nil)

// scanCollector reads the source's counts (processes scans skipped, holds
// that expired) at scrape time.
type scanCollector struct{ src Source }

func (c scanCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- scanSkippedDesc
	ch <- holdsExpiredDesc
}

func (c scanCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(scanSkippedDesc, prometheus.CounterValue, float64(c.src.ScanSkipped()))
	ch <- prometheus.MustNewConstMetric(holdsExpiredDesc, prometheus.CounterValue, float64(c.src.HoldsExpired()))
}

type tableCollector struct {
	a *Agent
}

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- trackedDesc
	ch <- overdueDesc
	ch <- orphanedDesc
	ch <- zombieDesc
	ch <- unkillableDesc
	ch <- overdueInfoDesc
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a == nil {
		return
	}
	s := c.a.stats()
	for _, r := range s.rules {
		ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(s.tracked[r]), r)
		ch <- prometheus.MustNewConstMetric(overdueDesc, prometheus.GaugeValue, float64(s.overdue[r]), r)
		ch <- prometheus.MustNewConstMetric(orphanedDesc, prometheus.GaugeValue, float64(s.orphaned[r]), r)
		ch <- prometheus.MustNewConstMetric(zombieDesc, prometheus.GaugeValue, float64(s.zombies[r]), r)
		ch <- prometheus.MustNewConstMetric(unkillableDesc, prometheus.GaugeValue, float64(s.unkillable[r]), r)
	}
	for _, p := range s.overdueProcs {
		ch <- prometheus.MustNewConstMetric(overdueInfoDesc, prometheus.GaugeValue, 1,
			p.rule, strconv.Itoa(p.pid), p.comm, p.podUID, p.containerID)
	}
}
