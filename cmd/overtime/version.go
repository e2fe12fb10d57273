package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"overtime/agent"
)

// Set at build time: -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func buildInfo() agent.BuildInfo {
	c := commit
	if c == "" {
		c = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					c = s.Value
				}
			}
		}
	}
	return agent.BuildInfo{Version: version, Commit: c, GoVersion: runtime.Version()}
}

func cmdVersion(w io.Writer) int {
	bi := buildInfo()
	fmt.Fprintf(w, "overtime %s\ncommit %s\n%s %s/%s\n", bi.Version, bi.Commit, bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	return exitOK
}
