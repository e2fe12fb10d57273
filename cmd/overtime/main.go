// Command overtime is the node agent: it ends backup-engine processes that
// run past their deadline and removes the files they leave behind.
//
//	overtime run [--config FILE]     run the agent in the foreground
//	overtime validate --config FILE  check a config file
//	overtime ps [--addr URL] [-o table|wide|json]
//	overtime version
package main

import (
	"fmt"
	"io"
	"os"

	"overtime/agent"
)

// Exit statuses of the contract.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "ps":
		return cmdPs(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		return cmdVersion(stdout)
	case guardCommand: // started by run, not by hand
		return cmdGuard(args[1:], stderr)
	case "defaults":
		_, _ = stdout.Write(agent.DefaultConfigYAML())
		return exitOK
	case "help", "-h", "--help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "overtime: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: overtime <command> [flags]

commands:
  run [--config FILE]       run the agent in the foreground (embedded default rules without --config)
  validate --config FILE    check a config file; each problem as FILE:LINE: FIELD: message
  ps [--addr URL] [-o table|wide|json]
                            list the processes a running agent tracks
  version                   print version, commit and Go version
  defaults                  print the embedded default config (a starting point for --config)

Run 'overtime <command> -h' for a command's flags.
`)
}
