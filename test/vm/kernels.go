package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// kernel is one Debian kernel of the matrix: the cloud flavour of a suite
// (everything a guest booted from an initramfs needs is built in: serial
// console, devtmpfs, tmpfs, cgroups v1 and v2, BTF).
type kernel struct {
	name  string // short name in the output: "5.10"
	suite string // Debian suite serving it
}

var kernels = []kernel{
	{"5.10", "bullseye"},
	{"6.1", "bookworm"},
	{"6.12", "trixie"},
}

// fetched is an unpacked kernel package.
type fetched struct {
	kernel
	pkg     string // the versioned package, linux-image-...-cloud-amd64
	vmlinuz string
}

// fetchKernel downloads the suite's cloud kernel into cache (once: a later
// run finds it unpacked) through a private apt sources list and state, so
// the host's own apt configuration is never touched, and unpacks it with
// dpkg-deb.
func fetchKernel(cache string, k kernel, logf func(string, ...any)) (fetched, error) {
	dir := filepath.Join(cache, "kernels", k.suite)
	f := fetched{kernel: k}
	if b, err := os.ReadFile(filepath.Join(dir, "package")); err == nil {
		f.pkg = strings.TrimSpace(string(b))
		f.vmlinuz, err = findVmlinuz(dir)
		if err == nil {
			return f, nil
		}
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return f, fmt.Errorf("kernel %s: %s not found (a Debian host is needed to fetch kernels)", k.name, tool)
		}
	}
	aptDir := filepath.Join(cache, "apt", k.suite)
	for _, d := range []string{"lists/partial", "archives/partial"} {
		if err := os.MkdirAll(filepath.Join(aptDir, d), 0o755); err != nil {
			return f, err
		}
	}
	sources := filepath.Join(aptDir, "sources.list")
	line := fmt.Sprintf("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n", k.suite)
	if err := os.WriteFile(sources, []byte(line), 0o644); err != nil {
		return f, err
	}
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + sources,
		"-o", "Dir::Etc::SourceParts=/nonexistent",
		"-o", "Dir::State::Lists=" + filepath.Join(aptDir, "lists"),
		"-o", "Dir::Cache=" + aptDir,
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Sandbox::User=root",
		"-o", "Acquire::Languages=none",
	}
	logf("kernel %s: apt-get update (%s, private lists in %s)", k.name, k.suite, aptDir)
	if out, err := exec.Command("apt-get", append(opts, "-qq", "update")...).CombinedOutput(); err != nil {
		return f, fmt.Errorf("kernel %s: apt-get update for %s: %v\n%s", k.name, k.suite, err, out)
	}
	out, err := exec.Command("apt-cache", append(opts, "show", "linux-image-cloud-amd64")...).Output()
	if err != nil {
		return f, fmt.Errorf("kernel %s: apt-cache show linux-image-cloud-amd64 (%s): %v", k.name, k.suite, err)
	}
	m := regexp.MustCompile(`(?m)^Depends: (linux-image-[^ ,]+)`).FindSubmatch(out)
	if m == nil {
		return f, fmt.Errorf("kernel %s: linux-image-cloud-amd64 in %s depends on no linux-image package", k.name, k.suite)
	}
	f.pkg = string(m[1])
	logf("kernel %s: apt-get download %s", k.name, f.pkg)
	dl := exec.Command("apt-get", append(opts, "-qq", "download", f.pkg)...)
	dl.Dir = aptDir
	if out, err := dl.CombinedOutput(); err != nil {
		return f, fmt.Errorf("kernel %s: apt-get download %s: %v\n%s", k.name, f.pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(aptDir, f.pkg+"_*.deb"))
	if len(debs) == 0 {
		return f, fmt.Errorf("kernel %s: %s downloaded no .deb in %s", k.name, f.pkg, aptDir)
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		return f, err
	}
	if out, err := exec.Command("dpkg-deb", "-x", debs[len(debs)-1], tmp).CombinedOutput(); err != nil {
		return f, fmt.Errorf("kernel %s: dpkg-deb -x %s: %v\n%s", k.name, debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, "package"), []byte(f.pkg+"\n"), 0o644); err != nil {
		return f, err
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return f, err
	}
	for _, d := range debs {
		_ = os.Remove(d)
	}
	f.vmlinuz, err = findVmlinuz(dir)
	return f, err
}

func findVmlinuz(dir string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(m) == 0 {
		return "", errors.New("no boot/vmlinuz-* in " + dir)
	}
	return m[0], nil
}
