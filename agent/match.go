package agent

import (
	"path"
	"strings"

	"overtime/internal/node"
)

// Matches reports whether p matches every match field the rule gives.
func (r *Rule) Matches(p *node.Process) bool {
	m := &r.Match
	if len(m.Comm) > 0 && !anyEqual(m.Comm, p.Comm) {
		return false
	}
	if len(m.Exe) > 0 && !anyGlob(m.Exe, p.Exe) {
		return false
	}
	if len(m.Cgroup) > 0 && !anyGlob(m.Cgroup, p.Cgroup) {
		return false
	}
	var args []string
	if len(p.Args) > 1 {
		args = p.Args[1:]
	}
	for _, g := range m.Args {
		if !anyArg(g, args) {
			return false
		}
	}
	return true
}

func anyEqual(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func anyGlob(globs []string, s string) bool {
	for _, g := range globs {
		if matchGlob(g, s) {
			return true
		}
	}
	return false
}

func anyArg(g string, args []string) bool {
	for _, a := range args {
		if matchGlob(g, a) {
			return true
		}
	}
	return false
}

// firstMatch returns the first rule, in config order, that p matches.
func firstMatch(rules []*Rule, p *node.Process) *Rule {
	for _, r := range rules {
		if r.Matches(p) {
			return r
		}
	}
	return nil
}

// commKeys returns what the kernel may prefilter a rule's execs on: the
// comm names, or else the literal basenames of its exe globs (a task's comm
// is the basename of the file it executed, cut to 15 bytes). ok is false
// when the rule gives neither, so every exec must go to user space for it.
func (r *Rule) commKeys() (keys []string, ok bool) {
	if len(r.Match.Comm) > 0 {
		return r.Match.Comm, true
	}
	if len(r.Match.Exe) == 0 {
		return nil, false
	}
	for _, g := range r.Match.Exe {
		base := path.Base(g)
		if strings.ContainsAny(base, `*?[\`) || base == "/" || base == "." {
			return nil, false
		}
		if len(base) > 15 {
			base = base[:15]
		}
		keys = append(keys, base)
	}
	return keys, true
}

// KernelFilter is what the kernel is told to let through at exec.
type KernelFilter struct {
	// Comms may match a rule: their execs go to user space.
	Comms []string
	// All lets every exec through: some rule cannot be prefiltered.
	All bool
	// Unfiltered names the rules that cannot be prefiltered.
	Unfiltered []string
	// Hold are the comms of rules with max_running: the kernel stops them
	// at exec until the agent resumes or ends them, so one past the cap
	// never runs an instruction.
	Hold []string
}

// Filter derives the kernel's exec filter from the rules.
func (c *Config) Filter() KernelFilter {
	var f KernelFilter
	seen := map[string]bool{}
	held := map[string]bool{}
	for _, r := range c.Rules {
		keys, ok := r.commKeys()
		if !ok {
			f.All = true
			f.Unfiltered = append(f.Unfiltered, r.Name)
			continue
		}
		for _, k := range keys {
			if !seen[k] {
				seen[k] = true
				f.Comms = append(f.Comms, k)
			}
			if r.MaxRunning > 0 && !held[k] {
				held[k] = true
				f.Hold = append(f.Hold, k)
			}
		}
	}
	return f
}
