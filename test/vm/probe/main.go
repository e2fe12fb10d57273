// Command probe reports which eBPF attach points and helpers this kernel
// offers beyond the tracepoints overtime is built on: fentry/fexit, kprobes
// through the kprobe PMU, BPF LSM and the bpf_send_signal_task kfunc. Each
// is tried for real (a two-instruction program loaded and attached), not
// guessed from a version. It prints one line:
//
//	@@OVT CAPS fentry=yes kprobe=no(no kprobe PMU) lsm=no(bpf not in /sys/kernel/security/lsm: ...) send_signal_task=no(not in vmlinux BTF)
//
// The VM runner (test/vm) runs it in every guest.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// hook is the kernel function the attach probes use: on the exec path, where
// a faster tracer would hook, and present on every kernel of the matrix.
const (
	hookFunc = "security_bprm_check"
	hookLSM  = "bprm_check_security"
)

func main() {
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Println("@@OVT CAPS error=" + oneLine(err))
		os.Exit(1)
	}
	fmt.Printf("@@OVT CAPS fentry=%s fexit=%s kprobe=%s lsm=%s send_signal_task=%s\n",
		result(tracing(ebpf.AttachTraceFEntry)), result(tracing(ebpf.AttachTraceFExit)),
		result(kprobe()), result(lsm()), result(kfunc("bpf_send_signal_task")))
}

func result(err error) string {
	if err == nil {
		return "yes"
	}
	return "no(" + oneLine(err) + ")"
}

func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "\n", " ")
	s = strings.ReplaceAll(s, ")", "]")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return strings.ReplaceAll(s, "(", "[")
}

func ret0() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
}

func tracing(at ebpf.AttachType) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: at, AttachTo: hookFunc,
		Instructions: ret0(), License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

func kprobe() error {
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
		return errors.New("no kprobe PMU")
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.Kprobe, Instructions: ret0(), License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer prog.Close()
	l, err := link.Kprobe(hookFunc, prog, nil)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

func lsm() error {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return fmt.Errorf("active LSMs unknown: %w", err)
	}
	if !strings.Contains(","+strings.TrimSpace(string(b))+",", ",bpf,") {
		return fmt.Errorf("bpf not among the active LSMs [%s]", strings.TrimSpace(string(b)))
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.LSM, AttachType: ebpf.AttachLSMMac, AttachTo: hookLSM,
		Instructions: ret0(), License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

// kfunc looks the function up in the kernel's BTF, where every kfunc is
// described (a kfunc has no helper number to probe with).
func kfunc(name string) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("vmlinux BTF: %w", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		return errors.New("not in vmlinux BTF")
	}
	return nil
}
