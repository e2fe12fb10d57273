package agent

import (
	"errors"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// Globs in match fields (exe, args, cgroup) are shell patterns in which `*`
// matches any run of characters, `/` included, so `*/restic` matches
// `/usr/bin/restic`; `?` matches one character and `[...]` a class.
// Cleanup paths are different: there `*` stays inside one segment and `**`
// crosses segments (see matchPath).

var errBadClass = errors.New("unterminated [ class")

// checkGlob reports a syntax error in a match glob.
func checkGlob(g string) error {
	for i := 0; i < len(g); i++ {
		switch g[i] {
		case '\\':
			i++
		case '[':
			end := classEnd(g, i)
			if end < 0 {
				return errBadClass
			}
			i = end
		}
	}
	return nil
}

// classEnd returns the index of the `]` closing the class opened at g[i].
func classEnd(g string, i int) int {
	j := i + 1
	if j < len(g) && (g[j] == '!' || g[j] == '^') {
		j++
	}
	if j < len(g) && g[j] == ']' {
		j++
	}
	for ; j < len(g); j++ {
		if g[j] == ']' {
			return j
		}
	}
	return -1
}

// matchGlob reports whether s matches the match glob g. It does not
// allocate: it runs on every candidate exec.
func matchGlob(g, s string) bool {
	gi, si := 0, 0
	starG, starS := -1, 0
	for si < len(s) {
		if gi < len(g) {
			switch c := g[gi]; c {
			case '*':
				starG, starS = gi, si
				gi++
				continue
			case '?':
				gi++
				si++
				continue
			case '[':
				if end := classEnd(g, gi); end >= 0 {
					if matchClass(g[gi+1:end], s[si]) {
						gi = end + 1
						si++
						continue
					}
					break
				}
				fallthrough
			default:
				if c == '\\' && gi+1 < len(g) {
					c = g[gi+1]
					if c == s[si] {
						gi += 2
						si++
						continue
					}
					break
				}
				if c == s[si] {
					gi++
					si++
					continue
				}
			}
		}
		if starG < 0 {
			return false
		}
		starS++
		gi, si = starG+1, starS
	}
	for gi < len(g) && g[gi] == '*' {
		gi++
	}
	return gi == len(g)
}

func matchClass(class string, c byte) bool {
	neg := false
	if len(class) > 0 && (class[0] == '!' || class[0] == '^') {
		neg, class = true, class[1:]
	}
	hit := false
	for i := 0; i < len(class); i++ {
		lo := class[i]
		if i+2 < len(class) && class[i+1] == '-' {
			if lo <= c && c <= class[i+2] {
				hit = true
			}
			i += 2
			continue
		}
		if lo == c {
			hit = true
		}
	}
	return hit != neg
}

// matchPath reports whether the absolute, cleaned path p matches a cleanup
// glob: `*` within one segment, `**` across segments. A glob starting with
// `**/` matches at any depth below `/`.
func matchPath(g, p string) bool {
	if strings.HasPrefix(g, "**/") {
		g = "/" + g
	}
	ok, err := doublestar.Match(g, p)
	return ok && err == nil
}
