package agent

import (
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"overtime/internal/node"
)

// BenchmarkMatch is rule matching on the default rules for the execs the
// kernel lets through (their comm is a rule's): the hit, and the misses on
// args that a comm-only filter cannot drop. Target: 0 allocs/op.
func BenchmarkMatch(b *testing.B) {
	rules := DefaultConfig().Rules
	cases := []struct {
		name string
		p    node.Process
		want string
	}{
		{"restic-backup", node.Process{Comm: "restic", Exe: "/usr/bin/restic",
			Args: []string{"restic", "-r", "s3:host/bucket", "--json", "backup", "/data"}, Cgroup: "/kubepods.slice/pod"}, "restic"},
		{"restic-snapshots-miss", node.Process{Comm: "restic", Exe: "/usr/bin/restic",
			Args: []string{"restic", "-r", "s3:host/bucket", "snapshots"}, Cgroup: "/kubepods.slice/pod"}, ""},
		{"longhorn-backup", node.Process{Comm: "longhorn", Exe: "/var/lib/longhorn/engine-binaries/img-v1/longhorn",
			Args: []string{"longhorn", "backup", "ls", "--volume-only", "nfs://server:/export"}}, "longhorn"},
		{"nfs-mount", node.Process{Comm: "mount.nfs", Exe: "/usr/sbin/mount.nfs",
			Args: []string{"mount", "-t", "nfs4", "server:/export", "/var/lib/longhorn-backupstore-mounts/server/export"}}, "longhorn-nfs-mount"},
		{"plain-mount-miss", node.Process{Comm: "mount", Exe: "/usr/bin/mount",
			Args: []string{"mount", "-t", "ext4", "/dev/sdb1", "/mnt/data"}}, ""},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			p := c.p
			if r := firstMatch(rules, &p); (r == nil && c.want != "") || (r != nil && r.Name != c.want) {
				b.Fatalf("matched %v, want %q", r, c.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				firstMatch(rules, &p)
			}
		})
	}
}

// BenchmarkTable is one matching process through the decision core: its
// exec (matched, a tree made, confined), its exit (the tree ends, its
// cgroup released) and its reap, with the timers due run as the loop runs
// them. The source and enforcer do nothing, so this is the agent's own
// cost per short-lived matching process.
func BenchmarkTable(b *testing.B) {
	cfg, err := ParseConfig("bench.yaml", []byte(`
rules:
  - name: ovt-bench
    match: {comm: [ovt-bench]}
    timeout: 1h
`))
	if err != nil {
		b.Fatal(err)
	}
	clock := &fakeClock{now: 1000 * time.Second}
	a := New(Options{Config: cfg, Source: nopSource{}, Enforcer: nopEnforcer{}, Clock: clock,
		Registry: prometheus.NewRegistry(), Self: 1})
	proc := node.Process{PPID: 1, Comm: "ovt-bench", Args: []string{"ovt-bench"},
		Exe: "/usr/local/bin/ovt-bench", Cgroup: "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"}
	pid := 100
	now := clock.now
	b.ReportAllocs()
	for b.Loop() {
		pid++
		if pid > 4_000_000 {
			pid = 101
		}
		now += time.Millisecond
		p := proc
		p.PID, p.Start, p.Born = pid, now, now
		a.handle(node.Event{Type: node.EventExec, PID: pid, PPID: 1, Time: now, Born: now, Proc: &p})
		a.handle(node.Event{Type: node.EventExit, PID: pid, Time: now + 500*time.Microsecond})
		a.handle(node.Event{Type: node.EventReap, PID: pid, Time: now + 600*time.Microsecond})
		clock.now = now
		a.tick(now)
	}
	if len(a.procs) != 0 || len(a.trees) != 0 {
		b.Fatalf("table not empty: %d processes, %d trees", len(a.procs), len(a.trees))
	}
}

// nopSource and nopEnforcer satisfy the ports and do nothing; the embedded
// interfaces are nil, so a method the core is not expected to call here
// panics.
type nopSource struct{ Source }

func (nopSource) Track(int) error             { return nil }
func (nopSource) Untrack(int) error           { return nil }
func (nopSource) WatchParent(int, int) error  { return nil }
func (nopSource) FilesEnabled() bool          { return true }
func (nopSource) EnableFiles() error          { return nil }
func (nopSource) DisableFiles() (bool, error) { return true, nil }

type nopEnforcer struct{ Enforcer }

func (nopEnforcer) Confine(string, int, time.Duration, bool) error { return nil }
func (nopEnforcer) Forget(string, int)                             {}
func (nopEnforcer) Release(string) error                           { return nil }
func (nopEnforcer) Signal(string, syscall.Signal) (int, error)     { return 0, nil }
func (nopEnforcer) Kill(string) error                              { return nil }
