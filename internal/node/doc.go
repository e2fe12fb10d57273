// Package node holds the node as read: the events the collector reports
// (exec, fork, exit, reap, file changes, lost records, orphans), the
// processes it lists, what a progress sample or a diagnosis finds, and the
// pod and container a cgroup path names. It is the vocabulary between the
// room that reads the node (collector) and the one that decides (agent):
// plain types and pure functions, importing nothing of the project, so the
// decision core links neither procfs readers nor cilium/ebpf.
package node
