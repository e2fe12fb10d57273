// Package testtool finds the external tools tests run for real (helm,
// promtool, prometheus).
package testtool

import (
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv, when set (make test sets it), turns a missing tool into a
// test failure instead of a skip.
const RequireEnv = "OVERTIME_REQUIRE_TOOLS"

// Find returns the path of a command on PATH or in GOPATH/bin (where `go
// install` puts helm). A missing tool skips the test, or fails it when
// RequireEnv is set.
func Find(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s not found on PATH or in GOPATH/bin, and %s is set", name, RequireEnv)
	}
	t.Skipf("%s not found on PATH or in GOPATH/bin (set %s to make this a failure)", name, RequireEnv)
	return ""
}

// Skip skips t for something this machine lacks (root, a device, a kernel
// feature), or fails it when RequireEnv is set: where every test must run
// (make test), a skip is a test that did not run. Skips of what is
// impossible on some machines, listed in the README, call t.Skip instead.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf(format+" (and "+RequireEnv+" is set)", args...)
	}
	t.Skipf(format+" (set "+RequireEnv+" to make this a failure)", args...)
}
