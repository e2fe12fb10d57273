// Package agentproc drives an overtime agent subprocess for the end-to-end
// tests (test/e2e) and the bench (bench/): it starts `overtime run`, waits
// until it is ready, stops or crashes it, and reads what it tells: its
// metrics (the Prometheus text format, parsed by expfmt), its JSON API and
// its JSON log.
//
// It returns errors and never fails a test itself: the e2e harness turns
// them into t.Fatal, the bench into a failed figure.
package agentproc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say how to run the agent.
type Options struct {
	// Binary is the overtime binary.
	Binary string
	// Wrapper is a command that ends by exec'ing its arguments, run with
	// the binary and its arguments appended (none: the binary itself).
	Wrapper []string
	// Config is the config file; empty runs the embedded default rules
	// (no --config).
	Config string
	// Args are more flags of `overtime run`, after --listen and
	// --log-format json.
	Args []string
	// LogFile receives the agent's stdout and stderr. Empty: they are kept
	// in memory, through a pipe, and then the agent counts as exited (Done)
	// only once every process that inherited it has closed it: the hold
	// guard too.
	LogFile string
}

// Agent is a running (or ended) agent subprocess.
type Agent struct {
	Client
	// Cmd is the agent's command (its Process is the agent, or the
	// wrapper that exec'd it).
	Cmd *exec.Cmd
	// Began is when the process was started.
	Began time.Time

	logPath string
	logFile *os.File
	buf     *Buffer
	done    chan struct{}
	code    int
	close   sync.Once
}

// Start starts the agent on a free loopback port and does not wait for it
// to be ready.
func Start(o Options) (*Agent, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	a := &Agent{Client: NewClient(addr), done: make(chan struct{}), logPath: o.LogFile}
	args := []string{"run"}
	if o.Config != "" {
		args = append(args, "--config", o.Config)
	}
	args = append(args, "--listen", addr, "--log-format", "json")
	args = append(args, o.Args...)
	argv := append(append(slices.Clone(o.Wrapper), o.Binary), args...)
	a.Cmd = exec.Command(argv[0], argv[1:]...)
	if o.LogFile != "" {
		if a.logFile, err = os.Create(o.LogFile); err != nil {
			return nil, err
		}
		a.Cmd.Stdout, a.Cmd.Stderr = a.logFile, a.logFile
	} else {
		a.buf = &Buffer{}
		a.Cmd.Stdout, a.Cmd.Stderr = a.buf, a.buf
	}
	a.Began = time.Now()
	if err := a.Cmd.Start(); err != nil {
		a.closeLog()
		return nil, fmt.Errorf("start %s: %w", o.Binary, err)
	}
	go func() {
		_ = a.Cmd.Wait()
		a.code = a.Cmd.ProcessState.ExitCode()
		close(a.done)
	}()
	return a, nil
}

// FreeAddr is a loopback address with a port nobody listened on a moment
// ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// PID is the agent's process (or its wrapper's, which exec'd it).
func (a *Agent) PID() int { return a.Cmd.Process.Pid }

// Done is closed when the agent has exited (see Options.LogFile).
func (a *Agent) Done() <-chan struct{} { return a.done }

// Exited reports whether the agent has exited.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// ExitCode is the agent's exit code once Done, -1 when a signal ended it.
func (a *Agent) ExitCode() int {
	<-a.done
	return a.code
}

// WaitReady polls /readyz every poll until it answers 200, and returns the
// time from the start of the agent's process to then. It fails when the
// agent exits first or timeout passes, with the end of its log.
func (a *Agent) WaitReady(timeout, poll time.Duration) (time.Duration, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if a.Exited() {
			return 0, fmt.Errorf("agent exited with %d before ready:\n%s", a.code, a.Tail(40))
		}
		resp, err := c.Get("http://" + a.Addr + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(a.Began), nil
			}
		}
		time.Sleep(poll)
	}
	return 0, fmt.Errorf("agent not ready in %v:\n%s", timeout, a.Tail(40))
}

// ErrNoStop says the agent did not exit on SIGTERM in time and was killed.
var ErrNoStop = errors.New("agent did not stop on SIGTERM")

// Stop ends the agent gracefully (SIGTERM: it gives its trees back) and
// returns its exit code. If it is still running after grace it is killed,
// and the error wraps ErrNoStop. Stopping an ended agent returns its code.
func (a *Agent) Stop(grace time.Duration) (int, error) {
	var err error
	if !a.Exited() {
		_ = a.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(grace):
			_ = a.Cmd.Process.Kill()
			<-a.done
			err = fmt.Errorf("%w in %v", ErrNoStop, grace)
		}
	}
	a.closeLog()
	return a.code, err
}

// Crash ends the agent with SIGKILL and waits for it.
func (a *Agent) Crash() {
	_ = a.Cmd.Process.Kill()
	<-a.done
}

func (a *Agent) closeLog() {
	a.close.Do(func() {
		if a.logFile != nil {
			a.logFile.Close()
		}
	})
}

// Log is everything the agent wrote so far.
func (a *Agent) Log() string {
	if a.buf != nil {
		return a.buf.String()
	}
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// Tail is the last n lines of the agent's log.
func (a *Agent) Tail(n int) string {
	lines := strings.Split(strings.TrimSpace(a.Log()), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Record is one JSON log record of the agent.
type Record map[string]any

// Str is field k when it is a string.
func (r Record) Str(k string) string { s, _ := r[k].(string); return s }

// Time is the record's time.
func (r Record) Time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, r.Str("time"))
	return t
}

// Records returns the agent's JSON log records whose msg contains msg (""
// for all). Lines that are not JSON are passed over.
func (a *Agent) Records(msg string) []Record {
	var out []Record
	sc := bufio.NewScanner(strings.NewReader(a.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	// A line that cannot hold msg is not decoded (a bench's log has
	// thousands of lines). Only a message JSON writes as it is can be
	// looked for in the raw line.
	quick := msg != "" && plainJSON(msg)
	for sc.Scan() {
		line := sc.Bytes()
		if quick && !bytes.Contains(line, []byte(msg)) {
			continue
		}
		var r Record
		if json.Unmarshal(line, &r) == nil && strings.Contains(r.Str("msg"), msg) {
			out = append(out, r)
		}
	}
	return out
}

// plainJSON: s is printable ASCII that no JSON encoder escapes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || strings.IndexByte(`"\<>&`, c) >= 0 {
			return false
		}
	}
	return true
}

// Buffer is a bytes.Buffer safe for concurrent use: a subprocess's output
// read while it runs.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
