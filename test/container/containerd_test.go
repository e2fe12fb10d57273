package container

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// daemon is a containerd of the test's own: its own config (the CRI plugin
// off), socket, root and state directories, all under one temp dir.
type daemon struct {
	dir    string
	sock   string
	ns     string
	cmd    *exec.Cmd
	log    *os.File
	done   chan struct{}
	client *client.Client
}

// startContainerd starts containerd and connects a client to it in the
// namespace ns. Cleanup stops it and checks nothing of it stays mounted.
func startContainerd(t *testing.T, bin, dir, ns string) *daemon {
	t.Helper()
	d := &daemon{dir: dir, sock: filepath.Join(dir, "containerd.sock"), ns: ns, done: make(chan struct{})}
	for _, sub := range []string{"root", "state", "opt"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.sock, d.sock+".ttrpc",
		filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.log, err = os.Create(filepath.Join(dir, "containerd.log")); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bin, "--config", cfg)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	// Its own process group, so the test's signals never reach it by accident.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("containerd exited before serving:\n%s", d.logText())
		default:
		}
		if _, err := os.Stat(d.sock); err == nil {
			c, err := client.New(d.sock, client.WithDefaultNamespace(ns), client.WithTimeout(5*time.Second))
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				serving, err := c.IsServing(ctx)
				cancel()
				if err == nil && serving {
					d.client = c
					return d
				}
				c.Close()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd not serving on %s in 30s:\n%s", d.sock, d.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) ctx() context.Context {
	return namespaces.WithNamespace(context.Background(), d.ns)
}

func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.log.Name())
	return string(b)
}

// stop deletes the test's namespace, stops containerd (SIGTERM), and checks
// that nothing under its directory is still mounted.
func (d *daemon) stop(t *testing.T) {
	if d.client != nil {
		ctx, cancel := context.WithTimeout(d.ctx(), 30*time.Second)
		if err := d.client.NamespaceService().Delete(ctx, d.ns); err != nil {
			t.Errorf("delete containerd namespace %s: %v", d.ns, err)
		}
		cancel()
		d.client.Close()
		d.client = nil
	}
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
			t.Errorf("containerd did not stop on SIGTERM in 20s")
		}
	}
	d.log.Close()
	if t.Failed() {
		t.Logf("containerd log:\n%s", d.logText())
	}
	if m := mountsUnder(t, d.dir); len(m) > 0 {
		t.Errorf("still mounted under %s after containerd stopped: %v", d.dir, m)
	}
}

// mountsUnder lists the mount points of this mount namespace at or under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
