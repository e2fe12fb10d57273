// Package collector reads the node: the eBPF event stream of exec, fork,
// exit and file creation, procfs for the start-up scan and resyncs, the open
// files of a process and what a process is blocked on. What it reports is in
// the types of package node. It decides nothing; the agent does.
package collector
