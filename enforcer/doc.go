// Package enforcer is the room that changes the node: it gives each tracked
// process tree its own cgroup (cgroup v2, or the v1 freezer hierarchy), sends
// signals only through pidfds or the tree's cgroup so a reused PID is never
// hit, ends a tree with cgroup.kill (or freeze-kill-thaw on v1), and removes
// the files a tree left behind without racing a replacement or following a
// symlink. It satisfies agent.Enforcer by shape and imports no other
// package of the project.
package enforcer
