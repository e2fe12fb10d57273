package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// buildInitramfs builds the agent, the probe and the test binaries (static,
// CGO_ENABLED=0), the C helpers the e2e tests run (static), and packs them
// with busybox, restic (with the libraries it loads) and the init script
// into one uncompressed initramfs, shared by every kernel: the cloud
// kernels need no modules for it.
func buildInitramfs(cache string, set testSet, logf func(string, ...any)) (string, error) {
	t0 := time.Now()
	out := filepath.Join(cache, "build")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	busybox, err := staticBusybox()
	if err != nil {
		return "", err
	}
	restic, err := exec.LookPath("restic")
	if err != nil {
		return "", fmt.Errorf("restic not found (apt-get install restic; make deps does)")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", fmt.Errorf("cc not found: the e2e helper programs are compiled on the host")
	}
	env := append(os.Environ(), "CGO_ENABLED=0")
	goRun := func(args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = root, env
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return nil
	}
	ld := "-s -w"
	steps := [][]string{
		{"build", "-trimpath", "-ldflags", ld, "-o", filepath.Join(out, "overtime"), "./cmd/overtime"},
		{"build", "-trimpath", "-ldflags", ld, "-o", filepath.Join(out, "probe"), "./test/vm/probe"},
	}
	for _, r := range set.runs {
		if r.pkg == benchPkg {
			steps = append(steps, []string{"build", "-trimpath", "-ldflags", ld, "-o", filepath.Join(out, r.bin), "./" + r.pkg})
			continue
		}
		steps = append(steps, []string{"test", "-c", "-trimpath", "-ldflags", ld, "-o", filepath.Join(out, r.bin), "./" + r.pkg})
	}
	for _, s := range steps {
		if err := goRun(s...); err != nil {
			return "", err
		}
	}
	for _, name := range []string{"hang", "manager"} {
		src := filepath.Join(root, "test/e2e/testdata", name+".c")
		if b, err := exec.Command(cc, "-static", "-O2", "-o", filepath.Join(out, name), src).CombinedOutput(); err != nil {
			return "", fmt.Errorf("cc -static %s: %v\n%s (static glibc comes with libc6-dev)", src, err, b)
		}
	}

	path := filepath.Join(out, "initramfs-"+set.name+".cpio")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := newCpio(f)
	add := func(name, src string) {
		if err == nil {
			err = w.copyFile(name, src)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "root", "bin", "sbin", "usr/bin", "usr/sbin", "etc", "opt/ovt/cbin"} {
		if err == nil {
			err = w.mkdirAll(d)
		}
	}
	add("bin/busybox", busybox)
	// The tests copy sh, sleep and true under names of their own (the comm
	// is what the tracer filters on): a busybox applet link would not run
	// under another name, so these are the host's own programs, with the
	// libraries they load.
	libs := map[string]bool{}
	for _, b := range []string{"sh", "sleep", "true"} {
		real, rerr := filepath.EvalSymlinks("/bin/" + b)
		if rerr != nil {
			return "", fmt.Errorf("/bin/%s: %w", b, rerr)
		}
		add("bin/"+b, real)
		l, lerr := sharedLibs(real)
		if lerr != nil {
			return "", lerr
		}
		for _, x := range l {
			libs[x] = true
		}
	}
	if err == nil {
		err = w.file("init", 0o755, initScript)
	}
	for _, name := range []string{"overtime", "probe"} {
		add("opt/ovt/"+name, filepath.Join(out, name))
	}
	for _, r := range set.runs {
		add("opt/ovt/"+r.bin, filepath.Join(out, r.bin))
		if err == nil {
			err = w.mkdirAll("opt/ovt/src/" + r.pkg)
		}
	}
	add("opt/ovt/cbin/hang", filepath.Join(out, "hang"))
	add("opt/ovt/cbin/manager", filepath.Join(out, "manager"))
	add("usr/bin/restic", restic)
	l, lerr := sharedLibs(restic)
	if lerr != nil {
		return "", lerr
	}
	for _, x := range l {
		libs[x] = true
	}
	for _, x := range sortedKeys(libs) {
		add(strings.TrimPrefix(x, "/"), x)
	}
	files := map[string]string{
		"etc/passwd":         "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":          "root:x:0:\n",
		"etc/hosts":          "127.0.0.1 localhost\n",
		"opt/ovt/check.yaml": checkConfig,
	}
	for _, name := range sortedKeys(files) {
		if err == nil {
			err = w.file(name, 0o644, []byte(files[name]))
		}
	}
	for _, s := range sortedKeys(sets) {
		if err == nil {
			err = w.file("opt/ovt/plan."+s, 0o644, planFile(sets[s]))
		}
	}
	if err == nil {
		err = w.close()
	}
	if err != nil {
		return "", fmt.Errorf("initramfs %s: %w", path, err)
	}
	st, _ := f.Stat()
	logf("initramfs %s: %d MiB, built in %v", path, st.Size()>>20, time.Since(t0).Round(time.Second))
	return path, nil
}

func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(b)) == "" || strings.TrimSpace(string(b)) == os.DevNull {
		return "", fmt.Errorf("run from the overtime module: go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(b))), nil
}

// staticBusybox finds a statically linked busybox (Debian's busybox-static).
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		interp := false
		for _, prog := range f.Progs {
			interp = interp || prog.Type == elf.PT_INTERP
		}
		f.Close()
		if !interp {
			return p, nil
		}
	}
	return "", fmt.Errorf("no static busybox at /bin/busybox (apt-get install busybox-static; make deps does)")
}

// sharedLibs lists the libraries (and the loader) a dynamic binary loads,
// from ldd; none for a static one.
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
			}
		}
	}
	return libs, nil
}
