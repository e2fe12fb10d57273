//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// FileTracing is how the file programs are hooked into the kernel.
type FileTracing string

const (
	// FileTracingAuto: fentry/fexit where the kernel allows it, else the
	// syscall tracepoints. The zero value of Options.FileTracing.
	FileTracingAuto FileTracing = "auto"
	// FileTracingFentry: fentry/fexit programs on the kernel's file
	// functions (fentry.h). They run only when a file is opened with
	// O_CREAT, made, renamed or removed, so they cost nothing to the
	// node's other syscalls; they stay attached from Load to Close.
	FileTracingFentry FileTracing = "fentry"
	// FileTracingTracepoint: the syscall tracepoints (files_tp.h). While
	// one is attached every syscall of every task takes the kernel's
	// tracing path, so they are attached only while something is tracked
	// (EnableFiles, DisableFiles).
	FileTracingTracepoint FileTracing = "tracepoint"
)

// ParseFileTracing reads a file tracing mode: auto (or empty), fentry or
// tracepoint.
func ParseFileTracing(s string) (FileTracing, error) {
	switch FileTracing(s) {
	case "", FileTracingAuto:
		return FileTracingAuto, nil
	case FileTracingFentry, FileTracingTracepoint:
		return FileTracing(s), nil
	}
	return "", fmt.Errorf("file tracing %q: use auto, fentry or tracepoint", s)
}

// FileTracing is the mode the file programs run in: FileTracingFentry or
// FileTracingTracepoint.
func (t *Tracer) FileTracing() FileTracing {
	if t.fentry != nil {
		return FileTracingFentry
	}
	return FileTracingTracepoint
}

// FentryUnavailable says why the file programs run on the syscall
// tracepoints in auto mode (nil when fentry loaded, or was not tried).
func (t *Tracer) FentryUnavailable() error { return t.fentryErr }

// fentrySet is the loaded and attached fentry/fexit file programs.
type fentrySet struct {
	objs  fentryObjects
	links []link.Link
}

func (fs *fentrySet) close() error {
	return errors.Join(closeLinks(fs.links), fs.objs.Close())
}

// fentryHook is a kernel function the file programs hook, with the
// signature they read it with.
type fentryHook struct {
	fn     string
	params []paramKind
	ret    paramKind
	// userBit is the user_names bit (fentry.h USER_*) of a function whose
	// path parameters are user pointers on some kernels, struct filename
	// on others; 0 when they are always struct filename.
	userBit uint32
}

// paramKind is what a parameter (or return value) must be.
type paramKind int

const (
	kindInt      paramKind = iota // an integer (dirfd, flags, mode, return code)
	kindPath                      // struct filename *, or a char * where userBit allows
	kindFile                      // struct file *
	kindOpenFlag                  // const struct open_flags *
)

// user_names bits (fentry.h).
const (
	userMkdirat   = 1
	userSymlinkat = 2
	userLinkat    = 4
)

var fentryHooks = []fentryHook{
	{"do_filp_open", []paramKind{kindInt, kindPath, kindOpenFlag}, kindFile, 0},
	{"do_mkdirat", []paramKind{kindInt, kindPath, kindInt}, kindInt, userMkdirat},
	{"do_symlinkat", []paramKind{kindPath, kindInt, kindPath}, kindInt, userSymlinkat},
	{"do_linkat", []paramKind{kindInt, kindPath, kindInt, kindPath, kindInt}, kindInt, userLinkat},
	{"do_renameat2", []paramKind{kindInt, kindPath, kindInt, kindPath, kindInt}, kindInt, 0},
	{"do_unlinkat", []paramKind{kindInt, kindPath}, kindInt, 0},
	{"do_rmdir", []paramKind{kindInt, kindPath}, kindInt, 0},
}

// fentrySignatures checks every hooked function's signature in the
// kernel's BTF and returns the user_names bits: the programs read
// arguments by position, so a kernel whose functions differ gets the
// tracepoints, not wrong records.
func fentrySignatures(spec *btf.Spec) (uint32, error) {
	var user uint32
	for _, h := range fentryHooks {
		var fn *btf.Func
		if err := spec.TypeByName(h.fn, &fn); err != nil {
			return 0, fmt.Errorf("%s not in the kernel's BTF: %w", h.fn, err)
		}
		proto, ok := fn.Type.(*btf.FuncProto)
		if !ok {
			return 0, fmt.Errorf("%s: no prototype in BTF", h.fn)
		}
		if len(proto.Params) != len(h.params) {
			return 0, fmt.Errorf("%s has %d parameters, the programs read %d", h.fn, len(proto.Params), len(h.params))
		}
		for i, want := range h.params {
			user1, err := checkKind(proto.Params[i].Type, want, h.userBit != 0)
			if err != nil {
				return 0, fmt.Errorf("%s parameter %d (%s): %w", h.fn, i, proto.Params[i].Name, err)
			}
			if user1 {
				user |= h.userBit
			}
		}
		if _, err := checkKind(proto.Return, h.ret, false); err != nil {
			return 0, fmt.Errorf("%s return value: %w", h.fn, err)
		}
	}
	return user, nil
}

// checkKind checks t against want; for kindPath it reports whether t is a
// user char pointer (allowed only where userOK).
func checkKind(t btf.Type, want paramKind, userOK bool) (user bool, err error) {
	t = btf.UnderlyingType(t)
	switch want {
	case kindInt:
		if _, ok := t.(*btf.Int); !ok {
			return false, fmt.Errorf("%v, want an integer", t)
		}
		return false, nil
	case kindPath, kindFile, kindOpenFlag:
		ptr, ok := t.(*btf.Pointer)
		if !ok {
			return false, fmt.Errorf("%v, want a pointer", t)
		}
		target := btf.UnderlyingType(ptr.Target)
		if c, ok := target.(*btf.Int); ok && want == kindPath && userOK && c.Size == 1 {
			return true, nil
		}
		s, ok := target.(*btf.Struct)
		name := map[paramKind]string{kindPath: "filename", kindFile: "file", kindOpenFlag: "open_flags"}[want]
		if !ok || s.Name != name {
			return false, fmt.Errorf("%v, want struct %s *", t, name)
		}
		return false, nil
	}
	return false, fmt.Errorf("unknown kind %d", want)
}

// loadFentry loads the fentry/fexit file programs on the maps of t and
// attaches them. Any failure (tracing programs refused, a signature that
// differs, the verifier) is returned and nothing is left behind.
func (t *Tracer) loadFentry(ringSize int) (*fentrySet, error) {
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel BTF: %w", err)
	}
	user, err := fentrySignatures(kspec)
	if err != nil {
		return nil, err
	}
	spec, err := loadFentry()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[fentryVarUserNames].Set(user); err != nil {
		return nil, fmt.Errorf("set user_names: %w", err)
	}
	// Every map is overtime.c's but the scratch buffers: a tracing program
	// runs with migration disabled, not preemption, so it keeps buffers of
	// its own apart from the tracepoint programs'.
	shared := map[string]*ebpf.Map{
		fentryMapCommFilter: t.objs.CommFilter, fentryMapConfig: t.objs.Config,
		fentryMapEvents: t.objs.Events, fentryMapFileStash: t.objs.FileStash,
		fentryMapExited: t.objs.Exited, fentryMapLost: t.objs.Lost,
		fentryMapTracked: t.objs.Tracked, fentryMapHolds: t.objs.Holds, fentryMapHoldsExpired: t.objs.HoldsExpired,
	}
	for name := range spec.Maps {
		if _, ok := shared[name]; !ok && name != fentryMapScratch && name != fentryMapDirScratch && !strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("fentry object: map %s is neither shared nor its own", name)
		}
	}
	spec.Maps[fentryMapEvents].MaxEntries = uint32(ringSize)
	fs := &fentrySet{}
	if err := spec.LoadAndAssign(&fs.objs, &ebpf.CollectionOptions{MapReplacements: shared}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load fentry programs: %+v", ve)
		}
		return nil, fmt.Errorf("load fentry programs: %w", err)
	}
	// Exits first: a call already inside its function when its entry
	// program is attached finds no stashed arguments at its exit.
	p := &fs.objs.fentryPrograms
	exits := []*ebpf.Program{p.FexitFilpOpen, p.FexitMkdirat, p.FexitSymlinkat, p.FexitLinkat,
		p.FexitRenameat2, p.FexitUnlinkat, p.FexitRmdir}
	entries := []*ebpf.Program{p.FentryMkdirat, p.FentrySymlinkat, p.FentryLinkat,
		p.FentryRenameat2, p.FentryUnlinkat, p.FentryRmdir}
	for _, progs := range [][]*ebpf.Program{exits, entries} {
		links, err := attachTracing(progs)
		fs.links = append(fs.links, links...)
		if err != nil {
			return nil, errors.Join(err, fs.close())
		}
	}
	return fs, nil
}

// attachTracing attaches tracing programs at once: on older kernels each
// attach waits for RCU grace periods, together they overlap.
func attachTracing(progs []*ebpf.Program) ([]link.Link, error) {
	links := make([]link.Link, len(progs))
	errs := make([]error, len(progs))
	var wg sync.WaitGroup
	for i, p := range progs {
		wg.Go(func() {
			links[i], errs[i] = link.AttachTracing(link.TracingOptions{Program: p})
			if errs[i] != nil {
				errs[i] = fmt.Errorf("attach %s: %w", p, errs[i])
			}
		})
	}
	wg.Wait()
	var ok []link.Link
	for _, l := range links {
		if l != nil {
			ok = append(ok, l)
		}
	}
	return ok, errors.Join(errs...)
}
