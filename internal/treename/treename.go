// Package treename names the cgroup of a process tree:
// overtime.<rule>.<root pid>.<exec time ns>. The agent makes and reads the
// names, the enforcer only acts on cgroups that carry the prefix, and the
// bench makes trees of the same form; all of them take it from here.
//
// The agent can rebuild a tree, its rule and its real deadline from the
// name alone after a restart, so no state file is needed.
package treename

import (
	"strconv"
	"strings"
	"time"
)

// Prefix starts every cgroup overtime creates, followed by a dot.
const Prefix = "overtime"

// ValidRule reports whether s can be a rule's name, and so a part of a
// tree name: lower-case letters, digits and dashes ([a-z0-9-]+), never a
// dot.
func ValidRule(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// Format names the tree of rule whose root is pid, exec'd at start (boot
// clock).
func Format(rule string, pid int, start time.Duration) string {
	return Prefix + "." + rule + "." + strconv.Itoa(pid) + "." + strconv.FormatInt(start.Nanoseconds(), 10)
}

// Parse is the inverse of Format: ok is false for a name that is not a
// tree name of a valid rule, a positive pid and a start time not negative.
func Parse(name string) (rule string, pid int, start time.Duration, ok bool) {
	rest, found := strings.CutPrefix(name, Prefix+".")
	if !found {
		return "", 0, 0, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 || !ValidRule(parts[0]) {
		return "", 0, 0, false
	}
	p, err1 := strconv.Atoi(parts[1])
	ns, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || p <= 0 || ns < 0 {
		return "", 0, 0, false
	}
	return parts[0], p, time.Duration(ns), true
}
