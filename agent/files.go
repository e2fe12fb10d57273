package agent

import (
	"sort"
	"strings"

	"overtime/internal/node"
)

// onFile keeps the record of what a tree created: only entries the tree
// itself made can ever be removed.
func (a *Agent) onFile(ev node.Event) {
	p, ok := a.procs[ev.PID]
	if !ok || ev.File == nil {
		return
	}
	t, f := p.tree, ev.File
	switch f.Op {
	case node.FileCreate, node.FileMkdir, node.FileSymlink, node.FileLink:
		delete(t.opened, f.Path)
		a.addCreated(t, &created{path: f.Path, dev: f.Dev, ino: f.Ino, pid: p.PID})
	case node.FileOpen:
		if _, mine := t.created[f.Path]; !mine && len(t.opened) < a.cfg.Limits.MaxCreatedFiles {
			t.opened[f.Path] = true
		}
	case node.FileRename:
		// A temp file renamed to its final name keeps its record; a
		// renamed directory takes the records below it along.
		delete(t.created, f.NewPath)
		if c, ok := t.created[f.Path]; ok {
			delete(t.created, f.Path)
			if c.ino == 0 { // renamed before its mkdir/symlink/link record was read: lstat found nothing then
				c.dev, c.ino = f.Dev, f.Ino
			}
			c.path = f.NewPath
			t.created[f.NewPath] = c
		}
		prefix := f.Path + "/"
		for path, c := range t.created {
			if strings.HasPrefix(path, prefix) {
				delete(t.created, path)
				c.path = f.NewPath + "/" + path[len(prefix):]
				t.created[c.path] = c
			}
		}
	case node.FileUnlink:
		delete(t.created, f.Path)
		delete(t.opened, f.Path)
	}
}

func (a *Agent) addCreated(t *tree, c *created) {
	if _, ok := t.created[c.path]; !ok && len(t.created) >= a.cfg.Limits.MaxCreatedFiles {
		a.m.limitHits.WithLabelValues("max_created_files").Inc()
		a.log.Warn("not recording created file: max_created_files reached",
			a.rootAttrs(t, "path", c.path, "creator", c.pid, "limit", a.cfg.Limits.MaxCreatedFiles)...)
		return
	}
	t.seq++
	c.seq = t.seq
	t.created[c.path] = c
}

// cleanup removes what a dead tree created and its rule names, deepest
// first (a directory's contents before the directory), newest first among
// equals, then releases the tree's cgroup (the removal needs the tree's
// filesystem view, which the release drops). In monitor mode it only
// checks and reports. The removals run on the cleanup worker, one tree
// after another, and come back to the loop in chunks.
func (a *Agent) cleanup(t *tree) {
	r := t.rule
	if len(r.Cleanup.Paths) == 0 {
		a.release(t)
		return
	}
	list := make([]created, 0, len(t.created))
	for _, c := range t.created {
		list = append(list, *c)
	}
	sort.Slice(list, func(i, j int) bool {
		if di, dj := depth(list[i].path), depth(list[j].path); di != dj {
			return di > dj
		}
		return list[i].seq > list[j].seq
	})
	named := list[:0]
	for _, c := range list {
		if !anyPath(r.Cleanup.Paths, c.path) {
			// Most of what an engine creates is its data: counted, and
			// only logged at debug level.
			a.m.cleanupSkipped.WithLabelValues(r.Name, "outside_paths").Inc()
			a.log.Debug("cleanup skipped", a.rootAttrs(t, "path", c.path, "reason", "outside_paths", "creator", c.pid)...)
			continue
		}
		named = append(named, c)
	}
	dryRun := a.monitor()
	a.workers.Add(1)
	a.cleaning.Add(1)
	job := func() {
		defer a.workers.Done()
		done := removals{t: t, dryRun: dryRun}
		for _, c := range named {
			freed, skip, err := a.enf.Remove(t.name, c.path, c.dev, c.ino, dryRun)
			done.list = append(done.list, removal{created: c, freed: freed, skip: skip, err: err})
			if len(done.list) == removalChunk {
				a.report(done)
				done.list = nil
			}
		}
		a.release(t)
		a.cleaning.Done()
		done.last = true
		a.report(done)
	}
	// After the tree's confinements (see confine.go): the first keeps the
	// filesystem view the removals need.
	a.enqueue(nil, func() { a.cleanups.run(job) })
}

// removalChunk is how many removals come back to the loop at a time.
const removalChunk = 64

// removal is the outcome of one Remove.
type removal struct {
	created
	freed int64
	skip  string
	err   error
}

// removals are outcomes of a tree's cleanup, in order; last ends it.
type removals struct {
	t      *tree
	dryRun bool
	list   []removal
	last   bool
}

func (rs removals) apply(a *Agent) {
	t, r := rs.t, rs.t.rule
	for _, c := range rs.list {
		switch {
		case c.err != nil:
			a.m.cleanupErrors.WithLabelValues(r.Name).Inc()
			a.record(t, c.pid, "cleanup", "error", c.path+": "+c.err.Error())
			a.log.Error("cleanup failed", a.rootAttrs(t, "path", c.path, "creator", c.pid, "err", c.err)...)
		case c.skip != "":
			a.skip(t, c.pid, c.path, c.skip)
		case rs.dryRun:
			a.m.cleanupSkipped.WithLabelValues(r.Name, "monitor").Inc()
			a.record(t, c.pid, "cleanup", "skipped_monitor", "would remove "+c.path)
			a.log.Warn("would remove (monitor mode)", a.rootAttrs(t, "path", c.path, "creator", c.pid)...)
		default:
			a.m.removedFiles.WithLabelValues(r.Name).Inc()
			a.m.removedBytes.WithLabelValues(r.Name).Add(float64(c.freed))
			a.record(t, c.pid, "cleanup", "ok", "removed "+c.path)
			a.log.Info("removed", a.rootAttrs(t, "path", c.path, "creator", c.pid, "bytes", c.freed)...)
		}
	}
	if !rs.last {
		return
	}
	// Files the tree used but did not create are never removed; say so
	// for the ones the rule names, so a rule that expects them is visible.
	opened := make([]string, 0, len(t.opened))
	for path := range t.opened {
		if anyPath(r.Cleanup.Paths, path) {
			opened = append(opened, path)
		}
	}
	sort.Strings(opened)
	for _, path := range opened {
		a.skip(t, t.rootPID, path, "not_created")
	}
}

func (a *Agent) skip(t *tree, pid int, path, reason string) {
	a.m.cleanupSkipped.WithLabelValues(t.rule.Name, reason).Inc()
	a.record(t, pid, "cleanup", "skipped", reason+": "+path)
	a.log.Info("cleanup skipped", a.rootAttrs(t, "path", path, "reason", reason, "creator", pid)...)
}

func anyPath(globs []string, p string) bool {
	for _, g := range globs {
		if matchPath(g, p) {
			return true
		}
	}
	return false
}
