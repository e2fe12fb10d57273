package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"overtime/agent"
)

// loadConfig reads and parses a config file; without a file, the embedded
// defaults.
func loadConfig(path string) (*agent.Config, error) {
	if path == "" {
		return agent.DefaultConfig(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &agent.ConfigError{File: path, Problems: []agent.Problem{{Line: 0, Field: "(file)", Msg: readErr(err)}}}
	}
	return agent.ParseConfig(path, data)
}

func readErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file to check (required)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: overtime validate --config FILE")
		return exitUsage
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	names := make([]string, len(cfg.Rules))
	for i, r := range cfg.Rules {
		names[i] = r.Name
	}
	fmt.Fprintf(stdout, "%s: valid: mode %s, %d rules (%s)\n", *path, cfg.Mode, len(cfg.Rules), strings.Join(names, ", "))
	if f := cfg.Filter(); f.All {
		fmt.Fprintf(stdout, "%s: note: rules %s give no comm and no exe glob with a literal basename, so every exec on the node goes to user space to be matched; add match.comm to filter in the kernel\n",
			*path, strings.Join(f.Unfiltered, ", "))
	}
	return exitOK
}
