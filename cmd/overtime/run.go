package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"overtime/agent"
	"overtime/bpf"
	"overtime/collector"
	"overtime/enforcer"
	"overtime/internal/hostns"
)

type runFlags struct {
	config, listen, mode, logFormat, logLevel string
	ringBuffer, killPriority                  int
	pprof                                     bool
	filesIdle, holdBound                      time.Duration
	fileTracing                               string
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	var f runFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "config file (default: the embedded default rules)")
	fs.StringVar(&f.listen, "listen", "", "address for metrics and the API (overrides the file)")
	fs.StringVar(&f.mode, "mode", "", "enforce or monitor (overrides the file)")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.IntVar(&f.ringBuffer, "ring-buffer-size", bpf.DefaultRingBufferSize, "size of the kernel event ring buffer in bytes (a power of two, at least 4096)")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on the listen address (for profiling)")
	fs.DurationVar(&f.filesIdle, "file-tracing-idle", agent.DefaultFilesIdle, "detach the file syscall tracepoints after this long with nothing tracked")
	fs.StringVar(&f.fileTracing, "file-tracing", "auto", "how file changes are recorded: auto (fentry where the kernel allows it, else the syscall tracepoints), fentry or tracepoint")
	fs.DurationVar(&f.holdBound, "hold-bound", DefaultHoldBound, "resume a process the kernel stopped at exec after this long, even when the agent is down (up to 10s while the agent is attaching the file tracepoints for it)")
	fs.IntVar(&f.killPriority, "kill-thread-priority", 1, "SCHED_FIFO priority (1-99) of the thread that sends SIGKILL at deadlines; 0 runs it at the normal policy")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "overtime run: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "overtime run:", err)
		return exitUsage
	}
	if f.ringBuffer < 4096 || f.ringBuffer&(f.ringBuffer-1) != 0 {
		fmt.Fprintf(stderr, "overtime run: --ring-buffer-size %d: must be a power of two of at least 4096\n", f.ringBuffer)
		return exitUsage
	}
	if f.holdBound <= 0 {
		fmt.Fprintf(stderr, "overtime run: --hold-bound %v: must be greater than 0\n", f.holdBound)
		return exitUsage
	}
	if _, err := bpf.ParseFileTracing(f.fileTracing); err != nil {
		fmt.Fprintf(stderr, "overtime run: --file-tracing: %v\n", err)
		return exitUsage
	}
	if f.killPriority < 0 || f.killPriority > 99 {
		fmt.Fprintf(stderr, "overtime run: --kill-thread-priority %d: must be from 0 to 99\n", f.killPriority)
		return exitUsage
	}
	if f.filesIdle <= 0 {
		fmt.Fprintf(stderr, "overtime run: --file-tracing-idle %v: must be greater than 0\n", f.filesIdle)
		return exitUsage
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}

	// Before anything else runs: cgroup paths and moves are only right from
	// the host's cgroup namespace, and tracepoints attach through tracefs,
	// which the agent mounts in a mount namespace of its own when the node
	// has none (this may re-execute the binary).
	done, err := hostns.Prepare("/proc")
	switch {
	case errors.Is(err, hostns.ErrHostCgroupNSUnknown):
		log.Warn("running in the cgroup namespace the agent was started in", "err", err)
	case err != nil:
		log.Error("cannot prepare the agent's namespaces", "err", err)
		return exitFailure
	}
	if done.JoinedCgroupNS {
		log.Info("joined the host cgroup namespace")
	}
	if done.MountedTracefs {
		log.Info("tracefs was not mounted: mounted it in the agent's own mount namespace", "path", hostns.TracefsDir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, f, log); err != nil {
		log.Error("overtime stopped on an error", "err", err)
		return exitFailure
	}
	return exitOK
}

// load reads the config and applies the flags that override it.
func (f *runFlags) load() (*agent.Config, error) {
	cfg, err := loadConfig(f.config)
	if err != nil {
		return nil, err
	}
	if f.listen != "" {
		cfg.Listen = f.listen
	}
	switch agent.Mode(f.mode) {
	case "":
	case agent.ModeEnforce, agent.ModeMonitor:
		cfg.Mode = agent.Mode(f.mode)
	default:
		return nil, fmt.Errorf("overtime run: --mode %q: use enforce or monitor", f.mode)
	}
	return cfg, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use json or text", format)
}

// serve builds the parts, serves HTTP and runs the agent until ctx is done.
func serve(ctx context.Context, cfg *agent.Config, f runFlags, log *slog.Logger) error {
	enf, err := enforcer.New(enforcer.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("cgroups: %w", err)
	}
	procfs, err := collector.NewProcfs("/proc", enf.V1())
	if err != nil {
		return err
	}
	fileTracing, _ := bpf.ParseFileTracing(f.fileTracing) // checked in cmdRun
	tracer, err := bpf.Load(bpf.Options{RingBufferSize: f.ringBuffer, FileTracing: fileTracing})
	if err != nil {
		return fmt.Errorf("eBPF: %w", err)
	}
	defer tracer.Close()
	if why := tracer.FentryUnavailable(); why != nil {
		log.Info("file tracing on the syscall tracepoints: fentry is not available here", "file_tracing", string(tracer.FileTracing()), "why", why)
	} else {
		log.Info("file tracing", "file_tracing", string(tracer.FileTracing()))
	}
	// Before any process can be held at exec: the hold record on the
	// node's bpffs (what an earlier agent left there is resumed), then the
	// guard.
	if err := pinHolds(tracer, log); err == nil {
		defer tracer.UnpinHolds()
	}
	stopGuard, err := startGuard(ctx, tracer.Holds(), f.holdBound, f, log)
	if err != nil {
		return err
	}
	defer stopGuard()
	src := collector.NewSource(tracer, procfs, log)

	killThread, err := enforcer.NewKillThread()
	if err != nil {
		return fmt.Errorf("kill thread: %w", err)
	}
	// The kill thread runs Go code when it wakes, for which it needs one
	// of the runtime's GOMAXPROCS slots: with one a CPU (or fewer, under a
	// CPU limit), a busy agent can hold them all, each on a thread the
	// kernel has set aside for the node's other work, and the kill waits
	// for one of them to come back. Two more than that leave one free.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 2)
	}
	defer killThread.Close()

	reg := prometheus.NewRegistry()
	a := agent.New(agent.Options{
		Config: cfg, Source: src, Enforcer: enf, Progress: procfs, Unmounter: enf, Clock: collector.BootClock{},
		Logger: log, Registry: reg, Build: buildInfo(), FilesIdle: f.filesIdle,
		FileTracingMode: string(tracer.FileTracing()), KillAlarm: killThread,
	})
	switch pol := killThread.Start(f.killPriority, a.KillsDue); {
	case pol.Why != nil:
		log.Warn("kill thread runs at the normal priority: deadlines may wait for a CPU on a busy node", "why", pol.Why)
	default:
		log.Info("kill thread", "policy", pol.Policy, "priority", pol.Priority)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", readOnly(a.Handler(reg)))
	if f.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	log.Info("overtime starting", "version", version, "mode", string(cfg.Mode), "listen", ln.Addr().String(),
		"cgroup_mode", enf.Mode(), "rules", len(cfg.Rules))

	go reloadOnHUP(ctx, f, a, log)

	runErr := a.Run(ctx)
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	return runErr
}

// holdsPinDir is where the hold record is pinned, on the node's bpffs.
const holdsPinDir = "/sys/fs/bpf/overtime"

// pinHolds pins the tracer's hold record and resumes the processes an
// earlier agent left held (it and its guard were killed together).
func pinHolds(tracer *bpf.Tracer, log *slog.Logger) error {
	old, err := tracer.PinHolds(holdsPinDir)
	switch {
	case errors.Is(err, bpf.ErrNoBPFFS):
		log.Info("hold record not pinned: /sys/fs/bpf is not a bpffs; if the agent and its guard are killed at the same moment, a process held at exec then stays stopped (mount the node's bpffs at /sys/fs/bpf)")
	case err != nil:
		log.Warn("hold record not pinned", "err", err)
	}
	var resumed uint64
	for _, h := range old {
		if err := enforcer.Resume("/proc", h.PID, h.Born); err != nil {
			log.Debug("a process an earlier agent held is gone", "pid", h.PID, "err", err)
			continue
		}
		resumed++
		log.Warn("resumed a process an earlier agent left held at exec", "pid", h.PID)
	}
	if resumed > 0 {
		if err := tracer.Holds().AddExpired(resumed); err != nil {
			log.Warn("count expired holds", "err", err)
		}
	}
	return err
}

// reloadOnHUP re-reads the config file on SIGHUP; a bad file keeps the
// rules in force and says why.
func reloadOnHUP(ctx context.Context, f runFlags, a *agent.Agent, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if f.config == "" {
			log.Warn("SIGHUP: no --config file to reload; running the embedded defaults")
			continue
		}
		cfg, err := f.load()
		if err != nil {
			log.Error("SIGHUP: config not reloaded; keeping the rules in force", "err", strings.ReplaceAll(err.Error(), "\n", "; "))
			continue
		}
		a.Reload(cfg)
	}
}

// readOnly refuses every method but GET and HEAD: the API changes nothing.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only API", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}
