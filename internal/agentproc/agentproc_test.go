package agentproc

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"overtime/agent"
)

// fakeEnv makes the test binary a stand-in agent: `run --listen ADDR`
// serves /readyz (503, then 200 after --ready-after) and exits 3 on SIGTERM;
// the value of the variable says how it misbehaves.
const fakeEnv = "AGENTPROC_FAKE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeAgent(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeAgent(mode string, args []string) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	listen := fs.String("listen", "", "")
	fs.String("config", "", "")
	fs.String("log-format", "", "")
	readyAfter := fs.Duration("ready-after", 0, "")
	if len(args) == 0 || args[0] != "run" || fs.Parse(args[1:]) != nil {
		log.Error("bad arguments", "args", strings.Join(args, " "))
		return 2
	}
	if mode == "exit" {
		log.Error("cannot start: told to fail")
		return 1
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "err", err)
		return 1
	}
	start := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if time.Since(start) < *readyAfter {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	go http.Serve(l, mux)
	log.Info("ready", "pid", os.Getpid(), "args", strings.Join(args, " "))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
		select {}
	}
	<-sig
	log.Info("stopping \"on\" SIGTERM")
	return 3
}

func startFake(t *testing.T, mode string, o Options) *Agent {
	t.Helper()
	t.Setenv(fakeEnv, mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o.Binary = exe
	a, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Crash)
	return a
}

func TestStartReadyStop(t *testing.T) {
	for _, logFile := range []bool{false, true} {
		t.Run(fmt.Sprintf("log file %v", logFile), func(t *testing.T) {
			o := Options{Config: "/nonexistent/config.yaml", Args: []string{"--ready-after", "300ms"}}
			if logFile {
				o.LogFile = filepath.Join(t.TempDir(), "agent.log")
			}
			a := startFake(t, "ok", o)
			d, err := a.WaitReady(20*time.Second, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if d < 300*time.Millisecond {
				t.Errorf("ready after %v, before the fake's 300ms", d)
			}
			recs := a.Records("ready")
			if len(recs) != 1 || recs[0].Str("args") != "run --config /nonexistent/config.yaml --listen "+a.Addr+" --log-format json --ready-after 300ms" {
				t.Fatalf("ready records %v; log:\n%s", recs, a.Log())
			}
			if recs[0].Time().IsZero() || int(recs[0]["pid"].(float64)) != a.PID() {
				t.Errorf("record %v: time %v, pid not %d", recs[0], recs[0].Time(), a.PID())
			}
			if a.Exited() {
				t.Fatal("exited while serving")
			}
			code, err := a.Stop(10 * time.Second)
			if err != nil || code != 3 {
				t.Fatalf("Stop = %d, %v; want 3 (the fake's code on SIGTERM)", code, err)
			}
			if len(a.Records(`stopping "on" SIGTERM`)) != 1 || len(a.Records("")) != 2 {
				t.Errorf("records after stop:\n%s", a.Log())
			}
			if code, err := a.Stop(time.Second); code != 3 || err != nil || a.ExitCode() != 3 {
				t.Errorf("second Stop = %d, %v", code, err)
			}
		})
	}
}

func TestExitBeforeReady(t *testing.T) {
	a := startFake(t, "exit", Options{})
	_, err := a.WaitReady(20*time.Second, 10*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "exited with 1 before ready") || !strings.Contains(err.Error(), "told to fail") {
		t.Fatalf("WaitReady = %v; want the exit and the log's end", err)
	}
}

func TestNotReadyInTime(t *testing.T) {
	a := startFake(t, "ok", Options{Args: []string{"--ready-after", "1h"}})
	if _, err := a.WaitReady(500*time.Millisecond, 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "not ready in 500ms") {
		t.Fatalf("WaitReady = %v", err)
	}
}

func TestStopKillsAStubbornAgent(t *testing.T) {
	a := startFake(t, "stubborn", Options{})
	if _, err := a.WaitReady(20*time.Second, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	code, err := a.Stop(300 * time.Millisecond)
	if !errors.Is(err, ErrNoStop) || code != -1 {
		t.Fatalf("Stop = %d, %v; want -1 (killed), ErrNoStop", code, err)
	}
}

func TestCrash(t *testing.T) {
	a := startFake(t, "ok", Options{})
	if _, err := a.WaitReady(20*time.Second, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	a.Crash()
	if !a.Exited() || a.ExitCode() != -1 {
		t.Fatalf("after Crash: exited %v, code %d", a.Exited(), a.ExitCode())
	}
}

func TestWrapper(t *testing.T) {
	a := startFake(t, "ok", Options{Wrapper: []string{"/usr/bin/env", "WRAPPED=1"}})
	if _, err := a.WaitReady(20*time.Second, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", a.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env), "\x00WRAPPED=1\x00") && !strings.HasPrefix(string(env), "WRAPPED=1\x00") {
		t.Errorf("the wrapper's environment is not the agent's: %q", env)
	}
}

// The text format as client_golang writes it: a label value with spaces,
// quotes, a backslash and a newline (escaped), an empty one, a histogram.
const exposition = `# HELP overtime_overdue_process_info An overdue process.
# TYPE overtime_overdue_process_info gauge
overtime_overdue_process_info{comm="restic backup",container_id="",pid="42",pod_uid="",rule="r"} 1
overtime_overdue_process_info{comm="say \"hi\" \\ there\nnow",container_id="",pid="43",pod_uid="",rule="r"} 2
# TYPE overtime_kills_total counter
overtime_kills_total{result="ok",rule="r",signal="SIGKILL"} 3
# TYPE overtime_events_lost_total counter
overtime_events_lost_total 0
# TYPE overtime_kill_latency_seconds histogram
overtime_kill_latency_seconds_bucket{rule="r",le="0.1"} 1
overtime_kill_latency_seconds_bucket{rule="r",le="0.2"} 3
overtime_kill_latency_seconds_bucket{rule="r",le="0.4"} 4
overtime_kill_latency_seconds_bucket{rule="r",le="+Inf"} 4
overtime_kill_latency_seconds_sum{rule="r"} 0.7
overtime_kill_latency_seconds_count{rule="r"} 4
`

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(exposition)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		series string
		want   float64
		ok     bool
	}{
		{`overtime_overdue_process_info{comm="restic backup",container_id="",pid="42",pod_uid="",rule="r"}`, 1, true},
		{`overtime_overdue_process_info{comm="say \"hi\" \\ there\nnow",container_id="",pid="43",pod_uid="",rule="r"}`, 2, true},
		// Any label order.
		{`overtime_overdue_process_info{rule="r",pod_uid="",pid="42",container_id="",comm="restic backup"}`, 1, true},
		{`overtime_overdue_process_info{comm="restic",container_id="",pid="42",pod_uid="",rule="r"}`, 0, false},
		{`overtime_overdue_process_info{comm="restic backup",pid="42",rule="r"}`, 1, true}, // an empty value is no label
		{`overtime_kills_total{result="ok",rule="r",signal="SIGKILL"}`, 3, true},
		{`overtime_kills_total{result="ok",rule="r",signal="SIGTERM"}`, 0, false},
		{`overtime_kills_total{result="ok",rule="r"}`, 0, false},
		{`overtime_events_lost_total`, 0, true},
		{`overtime_kill_latency_seconds_count{rule="r"}`, 4, true},
		{`overtime_kill_latency_seconds_sum{rule="r"}`, 0.7, true},
		{`overtime_kill_latency_seconds_bucket{le="0.2",rule="r"}`, 3, true},
		{`overtime_kill_latency_seconds_bucket{rule="r",le="+Inf"}`, 4, true},
		{`overtime_nothing`, 0, false},
		{`not a series{`, 0, false},
	} {
		v, ok := m.Value(c.series)
		if ok != c.ok || v != c.want {
			t.Errorf("Value(%s) = %v, %v; want %v, %v", c.series, v, ok, c.want, c.ok)
		}
		if g := m.Get(c.series); g != c.want {
			t.Errorf("Get(%s) = %v, want %v", c.series, g, c.want)
		}
	}
	for _, c := range []struct {
		q, want float64
	}{
		{0.25, 0.1}, {0.5, 0.15}, {0.75, 0.2}, {1, 0.4},
	} {
		got, ok := m.Quantile("overtime_kill_latency_seconds", `rule="r"`, c.q)
		if !ok || math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, %v; want %v", c.q, got, ok, c.want)
		}
	}
	if _, ok := m.Quantile("overtime_kill_latency_seconds", `rule="other"`, 0.5); ok {
		t.Error("Quantile of a histogram that is not there")
	}
	if _, ok := m.Quantile("overtime_kills_total", `rule="r"`, 0.5); ok {
		t.Error("Quantile of a counter")
	}
	n := 0
	for series, v := range m.All() {
		if w, ok := m.Value(series); !ok || w != v {
			t.Errorf("All yields %s %v, Value says %v, %v", series, v, w, ok)
		}
		n++
	}
	if n != m.Len() || n != 10 {
		t.Errorf("All yields %d series, Len %d, want 10", n, m.Len())
	}
	if _, err := ParseMetrics("overtime_x{a=\"b} 1\n"); err == nil {
		t.Error("a broken exposition parsed")
	}
}

// A real registry and handler serve the text format, read through Client.
func TestClientReadsARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "overtime_overdue_process_info", Help: "x"}, []string{"comm", "rule"})
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "overtime_kill_latency_seconds", Help: "x", Buckets: []float64{0.1, 1}}, []string{"rule"})
	reg.MustRegister(info, lat)
	const comm = `a "quoted" name with spaces`
	info.WithLabelValues(comm, "r").Set(1)
	info.WithLabelValues("plain", "r").Set(2)
	for _, v := range []float64{0.05, 0.5, 0.5, 5} {
		lat.WithLabelValues("r").Observe(v)
	}
	procs := []agent.ProcessInfo{{PID: 42, Comm: comm, Rule: "r", State: agent.StateRunning}}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/api/v1/processes", func(w http.ResponseWriter, r *http.Request) { _ = json.NewEncoder(w).Encode(procs) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"))

	m, err := c.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Value(`overtime_overdue_process_info{comm="a \"quoted\" name with spaces",rule="r"}`); !ok || v != 1 {
		text, _ := c.MetricsText()
		t.Errorf("the series with spaces and quotes = %v, %v; /metrics:\n%s", v, ok, text)
	}
	if v := m.Get(`overtime_overdue_process_info{comm="plain",rule="r"}`); v != 2 {
		t.Errorf("plain series = %v", v)
	}
	if v := m.Get(`overtime_kill_latency_seconds_count{rule="r"}`); v != 4 {
		t.Errorf("histogram count = %v", v)
	}
	if q, ok := m.Quantile("overtime_kill_latency_seconds", `rule="r"`, 0.5); !ok || q != 0.55 {
		t.Errorf("p50 = %v, %v; want 0.55", q, ok)
	}
	got, err := c.Processes()
	if err != nil || len(got) != 1 || got[0].PID != 42 || got[0].Comm != comm || got[0].State != agent.StateRunning {
		t.Errorf("Processes = %+v, %v", got, err)
	}
	if _, err := c.Actions(); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Actions of a server without them: %v, want the 404", err)
	}
}
