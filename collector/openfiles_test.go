package collector

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

func TestOpenFilesFixture(t *testing.T) {
	p := newFixture(t, false, fakeProc{pid: 4242, comm: "restic", state: 'S', ppid: 1,
		flags: userFlags, start: 1, cmdline: "restic\x00", exe: "/usr/bin/restic", cgroup: "0::/\n",
		fds: map[string]string{
			"0":  "/dev/null",
			"1":  "socket:[1234]",
			"2":  "pipe:[55]",
			"3":  "anon_inode:[eventfd]",
			"4":  "/memfd:buf (deleted)",
			"5":  "/var/lib/restic/lock (deleted)",
			"6":  "/var/lib/restic/data",
			"7":  "/var/lib/restic/data",
			"8":  "net:[4026531840]",
			"9":  "anon_inode:[pidfd]",
			"10": "/var/lib/restic/a b",
		}})
	got, err := p.OpenFiles(4242)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/dev/null", "/var/lib/restic/a b", "/var/lib/restic/data", "/var/lib/restic/lock (deleted)"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("OpenFiles = %q\nwant %q", got, want)
	}
	if _, err := p.OpenFiles(999); !errors.Is(err, ErrGone) {
		t.Errorf("OpenFiles(999) error = %v, want ErrGone", err)
	}
}

func TestOpenFilesReal(t *testing.T) {
	p := newRealProcfs(t)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	held, err := os.Create(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	gone, err := os.Create(filepath.Join(dir, "gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fds[0]), "sock")
	defer sock.Close()
	defer syscall.Close(fds[1])

	// sleep 1000 <held 3<held 4>gone 5>pipe 6<>socket; stdout and stderr
	// are /dev/null.
	cmd := exec.Command("sleep", "1000")
	cmd.Stdin = held
	cmd.ExtraFiles = []*os.File{held, gone, pw, sock}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.Remove(gone.Name()); err != nil {
		t.Fatal(err)
	}

	// sleep opens and closes locale files as it starts: poll until it has
	// settled.
	want := []string{os.DevNull, gone.Name() + " (deleted)", held.Name()}
	var got []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if got, err = p.OpenFiles(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if reflect.DeepEqual(got, want) {
			break
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("OpenFiles = %q\nwant %q", got, want)
	}

	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if files, err := p.OpenFiles(cmd.Process.Pid); !errors.Is(err, ErrGone) {
		t.Errorf("OpenFiles(reaped) = %q, %v; want ErrGone", files, err)
	}
}
