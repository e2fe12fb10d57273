// Package bpf is the kernel side of overtime: eBPF programs on tracepoints
// (exec, fork, exit, reap and file changes of tracked processes), the
// bpf2go outputs compiled from them, and a small loader that attaches them
// and hands out decoded records. It holds no policy: which comms to let
// through and which processes to track are set by the caller.
//
// Regenerate with `go generate ./bpf` (clang and llvm-strip needed); the
// generated overtime_bpfel.go and overtime_bpfel.o are committed so a plain
// `go build` needs no C toolchain. gen_test.go checks they are current.
package bpf
