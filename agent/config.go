package agent

import (
	"bytes"
	_ "embed"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"overtime/internal/treename"
)

// Mode says whether the agent acts or only reports.
type Mode string

const (
	// ModeEnforce signals, kills and removes files.
	ModeEnforce Mode = "enforce"
	// ModeMonitor never signals or deletes; it reports what it would do.
	ModeMonitor Mode = "monitor"
)

// DefaultListen is where metrics and the API are served unless told
// otherwise: loopback, so a node does not expose the API by accident.
const DefaultListen = "127.0.0.1:9477"

// Config is the agent's configuration, as in the config file.
type Config struct {
	Mode   Mode
	Listen string
	Rules  []*Rule
	Limits Limits
}

// Limits bound what the agent keeps, so a storm of matching processes or
// files cannot grow it without end. What is not kept is counted.
type Limits struct {
	// MaxTracked is the most processes tracked at once.
	MaxTracked int
	// MaxCreatedFiles is the most created-file records kept per tree.
	MaxCreatedFiles int
}

// ForceUnmount is the on_unkillable action that unmounts (MNT_FORCE |
// MNT_DETACH, as umount -f -l) the mount an unkillable member is blocked on.
const ForceUnmount = "force_unmount"

// MinStall is the shortest stall a rule may set: trees are sampled at most
// once a second, so a shorter one could not be told from noise.
const MinStall = time.Second

// DefaultLimits are the limits when the config names none.
var DefaultLimits = Limits{MaxTracked: 20000, MaxCreatedFiles: 1024}

// Rule says which processes to watch and what to do with them.
type Rule struct {
	Name    string
	Match   Match
	Timeout time.Duration
	// Stall ends a tree that made no progress for this long (0: off): its
	// members read or wrote no bytes and used < 1% of one CPU.
	Stall time.Duration
	// OnUnkillable is what is done about a member that outlives SIGKILL
	// ("" nothing, or ForceUnmount: a lazy forced unmount of the mount it
	// is blocked on, when that mount point matches one of Unmount).
	OnUnkillable string
	Unmount      []string
	MaxRunning   int
	Kill         Kill
	Cleanup      Cleanup
}

// Match holds a rule's match fields; a process matches when every given
// field matches.
type Match struct {
	Comm   []string // any of: exact comm
	Exe    []string // any of: glob on the resolved executable
	Args   []string // all of: each glob matches some element of argv[1:]
	Cgroup []string // any of: glob on the cgroup path
}

// Kill says how a tree is ended at its deadline.
type Kill struct {
	Signal     syscall.Signal
	SignalName string
	Grace      time.Duration
}

// Cleanup says which files a tree leaves are removed, and when.
type Cleanup struct {
	When  []string // killed | failed | always
	Paths []string // globs on absolute paths; * within a segment, ** across
}

// Problem is one error in a config file.
type Problem struct {
	Line  int
	Field string
	Msg   string
}

// ConfigError lists every problem found in a config file.
type ConfigError struct {
	File     string
	Problems []Problem
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s:%d: %s: %s", e.File, p.Line, p.Field, p.Msg)
	}
	return b.String()
}

//go:embed defaults.yaml
var defaultConfig []byte

// DefaultConfigYAML is the embedded default configuration.
func DefaultConfigYAML() []byte { return bytes.Clone(defaultConfig) }

// DefaultConfig parses the embedded defaults.
func DefaultConfig() *Config {
	cfg, err := ParseConfig("defaults.yaml", defaultConfig)
	if err != nil {
		panic("embedded defaults are invalid: " + err.Error())
	}
	return cfg
}

var (
	yamlErrLine = regexp.MustCompile(`^line (\d+)`)
)

// ParseConfig parses and validates a config file. Every problem is reported
// with its line and field, in a *ConfigError.
func ParseConfig(file string, data []byte) (*Config, error) {
	p := &parser{file: file}
	cfg := &Config{Mode: ModeEnforce, Listen: DefaultListen, Limits: DefaultLimits}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line := 1
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlErrLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = strings.TrimPrefix(msg[len(m[0]):], ": ")
		}
		return nil, &ConfigError{File: file, Problems: []Problem{{Line: line, Field: "(document)", Msg: msg}}}
	}
	if len(doc.Content) == 0 {
		p.add(1, "(document)", "empty config: it needs at least one rule")
		return nil, p.err()
	}
	root := doc.Content[0]
	p.mapping(root, "", map[string]func(*yaml.Node, string){
		"mode": func(n *yaml.Node, f string) {
			if s, ok := p.str(n, f); ok {
				switch Mode(s) {
				case ModeEnforce, ModeMonitor:
					cfg.Mode = Mode(s)
				default:
					p.add(n.Line, f, fmt.Sprintf("%q is not a mode: use enforce or monitor", s))
				}
			}
		},
		"listen": func(n *yaml.Node, f string) {
			if s, ok := p.str(n, f); ok {
				if s == "" {
					p.add(n.Line, f, "must not be empty")
				}
				cfg.Listen = s
			}
		},
		"limits": func(n *yaml.Node, f string) {
			p.mapping(n, f, map[string]func(*yaml.Node, string){
				"max_tracked_processes": func(n *yaml.Node, f string) { cfg.Limits.MaxTracked = p.positive(n, f) },
				"max_created_files":     func(n *yaml.Node, f string) { cfg.Limits.MaxCreatedFiles = p.positive(n, f) },
			})
		},
		"rules": func(n *yaml.Node, f string) {
			if n.Kind != yaml.SequenceNode {
				p.add(n.Line, f, "must be a list of rules")
				return
			}
			seen := map[string]int{}
			for i, rn := range n.Content {
				rf := fmt.Sprintf("%s[%d]", f, i)
				r := p.rule(rn, rf)
				if r == nil {
					continue
				}
				if r.Name != "" {
					if first, dup := seen[r.Name]; dup {
						p.add(rn.Line, rf+".name", fmt.Sprintf("duplicate rule name %q (first at line %d)", r.Name, first))
					} else {
						seen[r.Name] = rn.Line
					}
				}
				cfg.Rules = append(cfg.Rules, r)
			}
		},
	})
	if len(p.problems) == 0 && len(cfg.Rules) == 0 {
		p.add(root.Line, "rules", "no rules: the agent would watch nothing")
	}
	if len(p.problems) > 0 {
		return nil, p.err()
	}
	return cfg, nil
}

type parser struct {
	file     string
	problems []Problem
}

func (p *parser) add(line int, field, msg string) {
	p.problems = append(p.problems, Problem{Line: line, Field: field, Msg: msg})
}

func (p *parser) err() error { return &ConfigError{File: p.file, Problems: p.problems} }

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// mapping walks a mapping node, calling the handler of each known key and
// reporting unknown and repeated keys.
func (p *parser) mapping(n *yaml.Node, field string, keys map[string]func(*yaml.Node, string)) {
	if n.Kind != yaml.MappingNode {
		name := field
		if name == "" {
			name = "(document)"
		}
		p.add(n.Line, name, "must be a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := join(field, k.Value)
		h, ok := keys[k.Value]
		switch {
		case !ok:
			p.add(k.Line, f, "unknown key")
		case seen[k.Value]:
			p.add(k.Line, f, "repeated key")
		default:
			seen[k.Value] = true
			h(v, f)
		}
	}
}

func (p *parser) str(n *yaml.Node, f string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.add(n.Line, f, "must be a string")
		return "", false
	}
	return n.Value, true
}

func (p *parser) strs(n *yaml.Node, f string) []string {
	if n.Kind != yaml.SequenceNode {
		p.add(n.Line, f, "must be a list of strings")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		if s, ok := p.str(c, fmt.Sprintf("%s[%d]", f, i)); ok {
			out = append(out, s)
		}
	}
	return out
}

func (p *parser) duration(n *yaml.Node, f string) time.Duration {
	s, ok := p.str(n, f)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.add(n.Line, f, fmt.Sprintf("%q is not a Go duration (e.g. 90s, 5m, 2h)", s))
		return 0
	}
	return d
}

func (p *parser) integer(n *yaml.Node, f string) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.add(n.Line, f, "must be a whole number")
		return 0, false
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil {
		p.add(n.Line, f, "must be a whole number")
		return 0, false
	}
	return v, true
}

func (p *parser) positive(n *yaml.Node, f string) int {
	v, ok := p.integer(n, f)
	if ok && v <= 0 {
		p.add(n.Line, f, "must be greater than 0")
	}
	return v
}

func (p *parser) rule(n *yaml.Node, f string) *Rule {
	r := &Rule{Kill: Kill{Signal: unix.SIGTERM, SignalName: "SIGTERM", Grace: 10 * time.Second}}
	before := len(p.problems)
	var hasName, hasMatch, hasTimeout bool
	p.mapping(n, f, map[string]func(*yaml.Node, string){
		"name": func(n *yaml.Node, f string) {
			hasName = true
			if s, ok := p.str(n, f); ok {
				if !treename.ValidRule(s) {
					p.add(n.Line, f, fmt.Sprintf("%q must be lower-case letters, digits and dashes ([a-z0-9-]+)", s))
				}
				r.Name = s
			}
		},
		"match": func(n *yaml.Node, f string) {
			hasMatch = true
			p.mapping(n, f, map[string]func(*yaml.Node, string){
				"comm": func(n *yaml.Node, f string) {
					r.Match.Comm = p.strs(n, f)
					for i, c := range r.Match.Comm {
						if c == "" || len(c) > 15 {
							p.add(n.Line, fmt.Sprintf("%s[%d]", f, i), fmt.Sprintf("%q: a comm is 1 to 15 bytes (the kernel truncates longer names)", c))
						}
					}
				},
				"exe":    func(n *yaml.Node, f string) { r.Match.Exe = p.globs(n, f) },
				"args":   func(n *yaml.Node, f string) { r.Match.Args = p.globs(n, f) },
				"cgroup": func(n *yaml.Node, f string) { r.Match.Cgroup = p.globs(n, f) },
			})
			if len(r.Match.Comm)+len(r.Match.Exe)+len(r.Match.Args)+len(r.Match.Cgroup) == 0 {
				p.add(n.Line, f, "a rule needs at least one match field (comm, exe, args or cgroup)")
			}
		},
		"timeout": func(n *yaml.Node, f string) {
			hasTimeout = true
			r.Timeout = p.duration(n, f)
			if r.Timeout <= 0 && len(p.problems) == before {
				p.add(n.Line, f, "must be greater than 0")
			}
		},
		"stall": func(n *yaml.Node, f string) {
			at := len(p.problems)
			r.Stall = p.duration(n, f)
			switch {
			case len(p.problems) > at:
			case r.Stall < 0:
				p.add(n.Line, f, "must not be negative (0 turns stall detection off)")
			case r.Stall > 0 && r.Stall < MinStall:
				p.add(n.Line, f, fmt.Sprintf("%v is too short: progress is sampled at most once a second, use %v or more (0 turns it off)", r.Stall, MinStall))
			}
		},
		"on_unkillable": func(n *yaml.Node, f string) {
			if s, ok := p.str(n, f); ok {
				if s != ForceUnmount {
					p.add(n.Line, f, fmt.Sprintf("%q: use %s (or leave it out)", s, ForceUnmount))
				}
				r.OnUnkillable = s
			}
		},
		"unmount": func(n *yaml.Node, f string) {
			r.Unmount = p.strs(n, f)
			for i, g := range r.Unmount {
				if msg := checkMountGlob(g); msg != "" {
					p.add(n.Content[i].Line, fmt.Sprintf("%s[%d]", f, i), msg)
				}
			}
		},
		"max_running": func(n *yaml.Node, f string) {
			if v, ok := p.integer(n, f); ok {
				if v < 0 {
					p.add(n.Line, f, "must be 0 (no cap) or more")
				}
				r.MaxRunning = v
			}
		},
		"kill": func(n *yaml.Node, f string) {
			p.mapping(n, f, map[string]func(*yaml.Node, string){
				"signal": func(n *yaml.Node, f string) {
					if s, ok := p.str(n, f); ok {
						sig, name, err := parseSignal(s)
						if err != nil {
							p.add(n.Line, f, err.Error())
						}
						r.Kill.Signal, r.Kill.SignalName = sig, name
					}
				},
				"grace": func(n *yaml.Node, f string) {
					r.Kill.Grace = p.duration(n, f)
					if r.Kill.Grace < 0 {
						p.add(n.Line, f, "must not be negative")
					}
				},
			})
		},
		"cleanup": func(n *yaml.Node, f string) {
			p.mapping(n, f, map[string]func(*yaml.Node, string){
				"when": func(n *yaml.Node, f string) {
					r.Cleanup.When = p.strs(n, f)
					for i, w := range r.Cleanup.When {
						switch w {
						case "killed", "failed", "always":
						default:
							p.add(n.Line, fmt.Sprintf("%s[%d]", f, i), fmt.Sprintf("%q: use killed, failed or always", w))
						}
					}
				},
				"paths": func(n *yaml.Node, f string) {
					r.Cleanup.Paths = p.strs(n, f)
					for i, g := range r.Cleanup.Paths {
						if msg := checkPathGlob(g); msg != "" {
							p.add(n.Content[i].Line, fmt.Sprintf("%s[%d]", f, i), msg)
						}
					}
				},
			})
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if !hasName {
		p.add(n.Line, f+".name", "missing: every rule needs a name")
	}
	if !hasMatch {
		p.add(n.Line, f+".match", "missing: a rule needs at least one match field")
	}
	if !hasTimeout {
		p.add(n.Line, f+".timeout", "missing: every rule needs a timeout")
	}
	switch {
	case r.OnUnkillable == ForceUnmount && len(r.Unmount) == 0:
		p.add(n.Line, f+".unmount", "missing: on_unkillable: force_unmount needs the mount point globs it may unmount")
	case r.OnUnkillable == "" && len(r.Unmount) > 0:
		p.add(n.Line, f+".unmount", "only with on_unkillable: force_unmount")
	}
	if len(r.Cleanup.Paths) > 0 && len(r.Cleanup.When) == 0 {
		r.Cleanup.When = []string{"killed"}
	}
	return r
}

// globs reads a list of exe/args/cgroup globs and checks their syntax.
func (p *parser) globs(n *yaml.Node, f string) []string {
	gs := p.strs(n, f)
	for i, g := range gs {
		if err := checkGlob(g); err != nil {
			p.add(n.Line, fmt.Sprintf("%s[%d]", f, i), fmt.Sprintf("%q: %v", g, err))
		}
	}
	return gs
}

// checkPathGlob returns why a cleanup path glob is refused, or "".
func checkPathGlob(g string) string {
	wild := true
	for _, seg := range strings.Split(strings.Trim(g, "/"), "/") {
		if seg != "**" && seg != "*" && seg != "" {
			wild = false
			break
		}
	}
	if wild {
		return fmt.Sprintf("%q matches every path: name the files to remove", g)
	}
	if !strings.HasPrefix(g, "/") && !strings.HasPrefix(g, "**/") {
		return fmt.Sprintf("%q is relative: cleanup paths are absolute globs (start with / or **/)", g)
	}
	if !doublestar.ValidatePattern(g) {
		return fmt.Sprintf("%q is not a valid glob", g)
	}
	if strings.Contains(g, "/../") || strings.HasSuffix(g, "/..") || strings.Contains(g, "/./") {
		return fmt.Sprintf("%q has . or .. segments: paths are matched cleaned", g)
	}
	return ""
}

// checkMountGlob returns why an unmount glob is refused, or "": it is
// absolute and names mounts, not every path.
func checkMountGlob(g string) string {
	if !strings.HasPrefix(g, "/") {
		return fmt.Sprintf("%q is relative: unmount globs are absolute mount points", g)
	}
	return checkPathGlob(g)
}

var signals = map[string]syscall.Signal{
	"SIGTERM": unix.SIGTERM, "SIGKILL": unix.SIGKILL, "SIGINT": unix.SIGINT,
	"SIGHUP": unix.SIGHUP, "SIGQUIT": unix.SIGQUIT, "SIGUSR1": unix.SIGUSR1,
	"SIGUSR2": unix.SIGUSR2, "SIGABRT": unix.SIGABRT,
}

func parseSignal(s string) (syscall.Signal, string, error) {
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig, ok := signals[name]; ok {
		return sig, name, nil
	}
	return 0, "", fmt.Errorf("%q is not a signal overtime sends (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGABRT, SIGKILL)", s)
}
