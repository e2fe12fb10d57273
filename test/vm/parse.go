package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// pkgResult is one test binary's run in a guest.
type pkgResult struct {
	pkg            string
	passed, failed []string
	skipped        map[string]string // test → reason
	failures       map[string]string // test → first message
	rc             int
	seconds        float64 // guest time
	ended, notRun  bool
}

// cellResult is everything one guest reported.
type cellResult struct {
	kernelRelease string
	caps          string
	mounts        []string
	notes         []string
	started       bool
	refused       string
	pkgs          []*pkgResult
	bench         []string // the bench's output lines (the perf set)
	done          bool
}

var fileLine = regexp.MustCompile(`^\s*[\w./-]+\.go:\d+: `)

// parseResults reads the guest's result port: @@OVT marker lines, and
// between BEGIN and END the -test.v=test2json output of a test binary,
// turned into events by `go tool test2json`.
func parseResults(out []byte, test2json func(pkg string, raw []byte) ([]byte, error)) (*cellResult, error) {
	c := &cellResult{}
	var cur *pkgResult
	var raw bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if cur != nil && !strings.HasPrefix(line, "@@OVT END ") {
			raw.WriteString(line + "\n")
			continue
		}
		if !strings.HasPrefix(line, "@@OVT ") {
			continue
		}
		kind, rest, _ := strings.Cut(strings.TrimPrefix(line, "@@OVT "), " ")
		switch kind {
		case "CELL":
			for _, f := range strings.Fields(rest) {
				if v, ok := strings.CutPrefix(f, "kernel="); ok {
					c.kernelRelease = v
				}
			}
		case "CAPS":
			c.caps = rest
		case "MOUNT":
			c.mounts = append(c.mounts, rest)
		case "NOTE":
			c.notes = append(c.notes, rest)
		case "BENCH":
			c.bench = append(c.bench, rest)
		case "STARTED":
			c.started = true
		case "REFUSED":
			c.refused = rest
			if c.refused == "" {
				c.refused = "(the agent printed nothing)"
			}
		case "NOTRUN":
			c.pkgs = append(c.pkgs, &pkgResult{pkg: rest, notRun: true})
		case "BEGIN":
			cur = &pkgResult{pkg: rest, skipped: map[string]string{}, failures: map[string]string{}}
			raw.Reset()
			c.pkgs = append(c.pkgs, cur)
		case "END":
			f := strings.Fields(rest)
			kv := map[string]string{}
			for _, x := range f[1:] {
				k, v, _ := strings.Cut(x, "=")
				kv[k] = v
			}
			cur.rc, _ = strconv.Atoi(kv["rc"])
			s, _ := strconv.ParseFloat(kv["start"], 64)
			e, _ := strconv.ParseFloat(kv["end"], 64)
			cur.seconds = e - s
			cur.ended = true
			events, err := test2json(cur.pkg, raw.Bytes())
			if err != nil {
				return c, fmt.Errorf("test2json %s: %w", cur.pkg, err)
			}
			cur.addEvents(events)
			cur = nil
		case "DONE":
			c.done = true
		}
	}
	if cur != nil { // the guest died inside a test binary
		if events, err := test2json(cur.pkg, raw.Bytes()); err == nil {
			cur.addEvents(events)
		}
	}
	return c, sc.Err()
}

type event struct {
	Action string
	Test   string
	Output string
}

func (p *pkgResult) addEvents(jsonLines []byte) {
	output := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(jsonLines))
	for dec.More() {
		var e event
		if dec.Decode(&e) != nil {
			break
		}
		if e.Test == "" {
			continue
		}
		top := !strings.Contains(e.Test, "/")
		switch e.Action {
		case "output":
			output[e.Test] = append(output[e.Test], e.Output)
		case "pass":
			if top {
				p.passed = append(p.passed, e.Test)
			}
		case "fail":
			if top {
				p.failed = append(p.failed, e.Test)
			}
			if _, ok := p.failures[topName(e.Test)]; !ok {
				p.failures[topName(e.Test)] = message(output[e.Test])
			}
		case "skip":
			if top {
				p.skipped[e.Test] = message(output[e.Test])
			}
		}
	}
}

func topName(t string) string { n, _, _ := strings.Cut(t, "/"); return n }

// message is what a test said last, without the framing lines and the
// file:line prefix: the skip or failure reason.
func message(lines []string) string {
	var msg string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if fileLine.MatchString(l) {
			msg = strings.TrimSpace(fileLine.ReplaceAllString(l, ""))
		} else if msg == "" {
			msg = t
		}
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}

// goTest2JSON runs `go tool test2json` on a binary's -test.v=test2json output.
func goTest2JSON(pkg string, raw []byte) ([]byte, error) {
	cmd := exec.Command("go", "tool", "test2json", "-p", pkg)
	cmd.Stdin = bytes.NewReader(raw)
	return cmd.Output()
}
