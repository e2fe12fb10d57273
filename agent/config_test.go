package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"overtime/internal/node"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	var names []string
	for _, r := range cfg.Rules {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "longhorn,longhorn-nfs-mount,restic,borg,kopia" {
		t.Fatalf("default rules = %s", got)
	}
	if cfg.Mode != ModeEnforce || cfg.Listen != DefaultListen {
		t.Fatalf("defaults mode=%s listen=%s", cfg.Mode, cfg.Listen)
	}
	// Backup engines that may run for hours are ended early when they stop
	// making progress; Longhorn's short wall-clock timeouts need no stall.
	for _, r := range cfg.Rules {
		want := time.Duration(0)
		switch r.Name {
		case "restic", "borg", "kopia":
			want = 30 * time.Minute
		}
		if r.Stall != want {
			t.Errorf("default rule %s: stall %v, want %v", r.Name, r.Stall, want)
		}
	}
	f := cfg.Filter()
	if f.All || len(f.Hold) != 0 {
		t.Fatalf("default rules must all be prefiltered in the kernel, none held: %+v", f)
	}
	if strings.Join(f.Comms, ",") != "longhorn,mount,mount.nfs,mount.nfs4,restic,borg,kopia" {
		t.Fatalf("kernel filter = %v", f.Comms)
	}
}

func TestDefaultRulesMatchRealCommandLines(t *testing.T) {
	cfg := DefaultConfig()
	cases := []struct {
		p    node.Process
		want string
	}{
		{node.Process{Comm: "longhorn", Exe: "/var/lib/longhorn/engine-binaries/longhornio-longhorn-engine-v1.6.2/longhorn",
			Args: []string{"longhorn", "backup", "inspect", "s3://bucket@us-east-1/?backup=backup-1&volume=pvc-1"}}, "longhorn"},
		{node.Process{Comm: "longhorn", Exe: "/engine-binaries/img/longhorn",
			Args: []string{"/engine-binaries/img/longhorn", "backup", "ls", "--volume-only", "nfs://srv:/export"}}, "longhorn"},
		// The engine itself (not a backup command) is none of overtime's business.
		{node.Process{Comm: "longhorn", Exe: "/engine-binaries/img/longhorn",
			Args: []string{"longhorn", "controller", "pvc-1"}}, ""},
		{node.Process{Comm: "mount.nfs4", Exe: "/usr/sbin/mount.nfs4",
			Args: []string{"mount.nfs4", "srv:/export", "/var/lib/longhorn-backupstore-mounts/srv/export", "-o", "nfsvers=4.1"}}, "longhorn-nfs-mount"},
		{node.Process{Comm: "mount", Exe: "/usr/bin/mount", Args: []string{"mount", "/dev/sda1", "/mnt"}}, ""},
		{node.Process{Comm: "restic", Exe: "/usr/bin/restic", Args: []string{"restic", "-r", "/repo", "backup", "/data"}}, "restic"},
		{node.Process{Comm: "restic", Exe: "/usr/bin/restic", Args: []string{"restic", "-r", "/repo", "check"}}, ""},
		{node.Process{Comm: "borg", Exe: "/usr/bin/python3.11", Args: []string{"/usr/bin/python3", "/usr/bin/borg", "create", "/r::a", "/d"}}, "borg"},
		{node.Process{Comm: "kopia", Exe: "/usr/bin/kopia", Args: []string{"kopia", "snapshot", "create", "/data"}}, "kopia"},
		{node.Process{Comm: "kopia", Exe: "/usr/bin/kopia", Args: []string{"kopia", "snapshot", "list"}}, ""},
	}
	for _, c := range cases {
		got := ""
		if r := firstMatch(cfg.Rules, &c.p); r != nil {
			got = r.Name
		}
		if got != c.want {
			t.Errorf("%v: matched %q, want %q", c.p.Args, got, c.want)
		}
	}
}

func TestParseConfigFields(t *testing.T) {
	cfg, err := ParseConfig("c.yaml", []byte(`
mode: monitor
listen: 0.0.0.0:9000
limits: {max_tracked_processes: 10, max_created_files: 5}
rules:
  - name: a
    match: {exe: ["*/x"], cgroup: ["/kubepods*"]}
    timeout: 90s
    stall: 3s
    on_unkillable: force_unmount
    unmount: ["/var/lib/longhorn-backupstore-mounts/*"]
    max_running: 3
    kill: {signal: INT, grace: 1s}
    cleanup: {paths: ["/tmp/a-*"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if cfg.Mode != ModeMonitor || cfg.Listen != "0.0.0.0:9000" || cfg.Limits.MaxTracked != 10 || cfg.Limits.MaxCreatedFiles != 5 {
		t.Fatalf("top level = %+v", cfg)
	}
	if r.OnUnkillable != ForceUnmount || len(r.Unmount) != 1 {
		t.Fatalf("on_unkillable = %q, unmount = %v", r.OnUnkillable, r.Unmount)
	}
	if r.Timeout != 90*time.Second || r.Stall != 3*time.Second || r.MaxRunning != 3 || r.Kill.SignalName != "SIGINT" || r.Kill.Grace != time.Second {
		t.Fatalf("rule = %+v", r)
	}
	if len(r.Cleanup.When) != 1 || r.Cleanup.When[0] != "killed" {
		t.Fatalf("cleanup.when defaults to [killed], got %v", r.Cleanup.When)
	}
	f := cfg.Filter()
	if len(f.Comms) != 1 || f.Comms[0] != "x" || f.All || len(f.Unfiltered) != 0 || len(f.Hold) != 1 || f.Hold[0] != "x" {
		t.Fatalf("exe basename prefilter = %+v", f)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // each a "LINE: FIELD: " fragment expected in the error
	}{
		{"unknown key", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    tiemout: 2m\n", []string{"c.yaml:5: rules[0].tiemout: unknown key"}},
		{"unknown top key", "modes: enforce\nrules: []\n", []string{"c.yaml:1: modes: unknown key"}},
		{"duplicate names", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n  - name: a\n    match: {comm: [b]}\n    timeout: 1m\n",
			[]string{"c.yaml:5: rules[1].name: duplicate rule name \"a\""}},
		{"no match", "rules:\n  - name: a\n    match: {}\n    timeout: 1m\n", []string{"c.yaml:3: rules[0].match: a rule needs at least one match field"}},
		{"missing match", "rules:\n  - name: a\n    timeout: 1m\n", []string{"c.yaml:2: rules[0].match: missing"}},
		{"zero timeout", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 0s\n", []string{"c.yaml:4: rules[0].timeout: must be greater than 0"}},
		{"negative timeout", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: -5m\n", []string{"c.yaml:4: rules[0].timeout: must be greater than 0"}},
		{"bad duration", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 5 minutes\n", []string{"c.yaml:4: rules[0].timeout: \"5 minutes\" is not a Go duration"}},
		{"relative glob", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup:\n      paths:\n        - locks/*\n", []string{"c.yaml:7: rules[0].cleanup.paths[0]: \"locks/*\" is relative"}},
		{"match all", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup: {paths: [\"**\"]}\n", []string{"rules[0].cleanup.paths[0]: \"**\" matches every path"}},
		{"match all abs", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup: {paths: [\"/**\"]}\n", []string{"rules[0].cleanup.paths[0]: \"/**\" matches every path"}},
		{"match all star", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup: {paths: [\"/**/*\"]}\n", []string{"matches every path"}},
		{"bad name", "rules:\n  - name: Restic_1\n    match: {comm: [a]}\n    timeout: 1m\n", []string{"c.yaml:2: rules[0].name: \"Restic_1\" must be lower-case"}},
		{"bad mode", "mode: kill\nrules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n", []string{"c.yaml:1: mode: \"kill\" is not a mode"}},
		{"bad signal", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    kill: {signal: SIGFOO}\n", []string{"c.yaml:5: rules[0].kill.signal: \"SIGFOO\" is not a signal"}},
		{"bad when", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    cleanup: {when: [sometimes], paths: [/tmp/x]}\n", []string{"rules[0].cleanup.when[0]: \"sometimes\""}},
		{"long comm", "rules:\n  - name: a\n    match: {comm: [abcdefghijklmnopq]}\n    timeout: 1m\n", []string{"rules[0].match.comm[0]"}},
		{"bad glob", "rules:\n  - name: a\n    match: {exe: [\"/usr/[bin\"]}\n    timeout: 1m\n", []string{"rules[0].match.exe[0]"}},
		{"syntax", "rules:\n  - name: a\n   match: x\n", []string{"c.yaml:1: (document): did not find expected"}},
		{"no rules", "mode: enforce\n", []string{"c.yaml:1: rules: no rules"}},
		{"empty", "", []string{"c.yaml:1: (document): empty config"}},
		{"rules not a list", "rules: {a: 1}\n", []string{"c.yaml:1: rules: must be a list"}},
		{"negative cap", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    max_running: -1\n", []string{"c.yaml:5: rules[0].max_running"}},
		{"negative stall", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    stall: -1s\n", []string{"c.yaml:5: rules[0].stall: must not be negative"}},
		{"short stall", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    stall: 500ms\n", []string{"c.yaml:5: rules[0].stall: 500ms is too short"}},
		{"bad stall", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    stall: soon\n", []string{"c.yaml:5: rules[0].stall: \"soon\" is not a Go duration"}},
		{"bad on_unkillable", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    on_unkillable: reboot\n", []string{"c.yaml:5: rules[0].on_unkillable: \"reboot\": use force_unmount"}},
		{"force_unmount without globs", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    on_unkillable: force_unmount\n", []string{"c.yaml:2: rules[0].unmount: missing"}},
		{"unmount without force_unmount", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    unmount: [/mnt/*]\n", []string{"rules[0].unmount: only with on_unkillable"}},
		{"relative unmount glob", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    on_unkillable: force_unmount\n    unmount: [\"**/nfs\"]\n", []string{"c.yaml:6: rules[0].unmount[0]: \"**/nfs\" is relative"}},
		{"unmount everything", "rules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 1m\n    on_unkillable: force_unmount\n    unmount: [\"/**\"]\n", []string{"rules[0].unmount[0]: \"/**\" matches every path"}},
		{"several at once", "mode: x\nrules:\n  - name: a\n    match: {comm: [a]}\n    timeout: 0\n",
			[]string{"c.yaml:1: mode:", "c.yaml:5: rules[0].timeout:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig("c.yaml", []byte(c.yaml))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *ConfigError", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%s\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestMatchGlob(t *testing.T) {
	cases := []struct {
		g, s string
		want bool
	}{
		{"*/restic", "/usr/bin/restic", true},
		{"*/restic", "/usr/bin/restic2", false},
		{"*/engine-binaries/*/longhorn", "/var/lib/longhorn/engine-binaries/img-v1/longhorn", true},
		{"*/engine-binaries/*/longhorn", "/engine-binaries/x/longhorn", true},
		{"*/engine-binaries/*/longhorn", "/usr/bin/longhorn", false},
		{"backup", "backup", true},
		{"backup", "backups", false},
		{"back*", "backup", true},
		{"b?ckup", "backup", true},
		{"[bc]ackup", "cackup", true},
		{"[!bc]ackup", "backup", false},
		{"[a-c]ackup", "backup", true},
		{`\*`, "*", true},
		{`\*`, "x", false},
		{"", "", true},
		{"*", "", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
	}
	for _, c := range cases {
		if got := matchGlob(c.g, c.s); got != c.want {
			t.Errorf("matchGlob(%q, %q) = %v, want %v", c.g, c.s, got, c.want)
		}
	}
}

func TestMatchPath(t *testing.T) {
	cases := []struct {
		g, p string
		want bool
	}{
		{"**/locks/*", "/srv/repo/locks/abc", true},
		{"**/locks/*", "/locks/abc", true},
		{"**/locks/*", "/srv/repo/locks/abc/def", false},
		{"**/locks/*", "/srv/repo/data/abc", false},
		{"/tmp/restic-*", "/tmp/restic-temp-1", true},
		{"/tmp/restic-*", "/tmp/x/restic-temp-1", false},
		{"**/lock.exclusive", "/r/lock.exclusive", true},
		{"/var/**/x.lck", "/var/a/b/c/x.lck", true},
	}
	for _, c := range cases {
		if got := matchPath(c.g, c.p); got != c.want {
			t.Errorf("matchPath(%q, %q) = %v, want %v", c.g, c.p, got, c.want)
		}
	}
}

func TestTreeNameRoundTrip(t *testing.T) {
	name := treeName("longhorn-nfs-mount", 4242, 123456789*time.Microsecond)
	r, pid, start, ok := parseTreeName(name)
	if !ok || r != "longhorn-nfs-mount" || pid != 4242 || start != 123456789*time.Microsecond {
		t.Fatalf("parse(%s) = %s %d %v %v", name, r, pid, start, ok)
	}
	for _, bad := range []string{"overtime", "overtime.a.b.c", "overtime.a.1", "other.a.1.2", "overtime.A.1.2", "overtime.a.-1.2"} {
		if _, _, _, ok := parseTreeName(bad); ok {
			t.Errorf("parseTreeName(%q) accepted", bad)
		}
	}
}
