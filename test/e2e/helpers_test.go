package e2e

import (
	binenc "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv names the helper the test binary runs as instead of the tests
// (see runHelper): the tests start real processes of their own making.
const helperEnv = "OVERTIME_E2E_HELPER"

// runHelper runs the test binary as a helper process:
//
//	writer FILE      appends a 64-byte line to FILE every 200 ms, forever
//	                 (it moves data and uses next to no CPU)
//	rest DIR ADDR    a restic REST backend storing repositories in DIR,
//	                 serving HTTP on ADDR
//	fuse MNT PROG    mounts a FUSE filesystem at MNT (run it in a mount
//	                 namespace of its own) that answers INIT and ACCESS and
//	                 reads every other request without ever answering it,
//	                 then runs PROG MNT and waits (see hungFUSE)
func runHelper(name string, args []string) int {
	switch {
	case name == "fuse" && len(args) == 2:
		return hungFUSE(args[0], args[1])
	case name == "writer" && len(args) == 1:
		f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for {
			if _, err := f.Write([]byte(strings.Repeat("x", 63) + "\n")); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			time.Sleep(200 * time.Millisecond)
		}
	case name == "rest" && len(args) == 2:
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(os.Stderr, http.Serve(ln, restBackend(args[0])))
		return 1
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q %q\n", name, args)
	return 2
}

// startHelper runs the test binary as helper name, under the program name
// comm (a symlink: the kernel takes a process's comm from the file name it
// executes).
func startHelper(t *testing.T, cg *testCgroup, dir, comm, name string, args ...string) *proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, comm)
	if err := os.Symlink(self, link); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	cmd := exec.Command(link, args...)
	if cg != nil {
		cmd = exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir, link}, args...)...)
	}
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), helperEnv+"="+name)
	// Its own process group: watch kills the group at the end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return watch(t, cmd)
}

// hungFUSE serves a FUSE filesystem whose daemon stops answering: a
// process that makes a request of it (a stat of the mount's root) waits in
// the kernel, and once it is signalled while the daemon holds its request,
// it sleeps uninterruptibly (state D) until the daemon answers or goes
// away: the kernel's request_wait_answer. Ending the helper (closing
// /dev/fuse) aborts the connection and releases it.
func hungFUSE(mnt, prog string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "fuse helper:", err); return 1 }
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fail(err)
	}
	// A plain blocking descriptor, read and written with raw system calls:
	// through an os.File the runtime's poller may take it, and a read then
	// fails with "not pollable".
	dev, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("open /dev/fuse: %w", err))
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", dev)
	if err := syscall.Mount("ovt-hung", mnt, "fuse.ovt", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		return fail(fmt.Errorf("mount: %w", err))
	}
	go func() {
		buf := make([]byte, 1<<20+4096)
		for {
			n, err := syscall.Read(dev, buf)
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.ENODEV {
				return // unmounted or aborted: the helper's end
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "fuse helper: read:", err)
				return
			}
			if n < 40 {
				continue
			}
			opcode := binenc.LittleEndian.Uint32(buf[4:8])
			unique := binenc.LittleEndian.Uint64(buf[8:16])
			var out []byte
			switch opcode {
			case 26: // FUSE_INIT: protocol 7.31, no features
				maxReadahead := binenc.LittleEndian.Uint32(buf[48:52])
				out = make([]byte, 16+64)
				binenc.LittleEndian.PutUint32(out[16:], 7)
				binenc.LittleEndian.PutUint32(out[20:], 31)
				binenc.LittleEndian.PutUint32(out[24:], maxReadahead)
				binenc.LittleEndian.PutUint32(out[36:], 4096) // max_write
				binenc.LittleEndian.PutUint32(out[40:], 1)    // time_gran
			case 34: // FUSE_ACCESS: not implemented, the kernel stops asking
				out = make([]byte, 16)
				errno := -int32(syscall.ENOSYS)
				binenc.LittleEndian.PutUint32(out[4:], uint32(errno))
			default: // held: never answered
				continue
			}
			binenc.LittleEndian.PutUint32(out[0:], uint32(len(out)))
			binenc.LittleEndian.PutUint64(out[8:], unique)
			if _, err := syscall.Write(dev, out); err != nil {
				fmt.Fprintln(os.Stderr, "fuse helper: write:", err)
			}
		}
	}()
	cmd := exec.Command(prog, mnt)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	fmt.Println(cmd.Process.Pid)
	_ = cmd.Wait()
	for { // the mount lives as long as the helper
		time.Sleep(time.Hour)
	}
}

// restTypes are the kinds of files of a restic repository.
var restTypes = []string{"data", "keys", "locks", "snapshots", "index"}

// restBackend serves restic's REST backend protocol (v1 and v2 listings)
// for repositories under root: POST /?create=true makes one; config and
// each file of a type are read (with ranges), stat'ed, written and removed
// at /config and /TYPE/NAME; GET /TYPE/ lists a type.
func restBackend(root string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := path.Clean("/" + r.URL.Path)
		if p == "/" {
			if r.Method == http.MethodPost && r.URL.Query().Get("create") == "true" {
				for _, typ := range restTypes {
					if err := os.MkdirAll(filepath.Join(root, typ), 0o700); err != nil {
						http.Error(w, err.Error(), http.StatusInternalServerError)
						return
					}
				}
				return
			}
			http.NotFound(w, r)
			return
		}
		parts := strings.Split(strings.Trim(p, "/"), "/")
		var file string
		switch {
		case len(parts) == 1 && parts[0] == "config":
			file = filepath.Join(root, "config")
		case len(parts) == 1 && strings.HasSuffix(r.URL.Path, "/") && r.Method == http.MethodGet:
			restList(w, r, filepath.Join(root, parts[0]))
			return
		case len(parts) == 2 && !strings.ContainsAny(parts[1], "./"):
			file = filepath.Join(root, parts[0], parts[1])
		default:
			http.NotFound(w, r)
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			f, err := os.Open(file)
			if err != nil {
				http.NotFound(w, r)
				return
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			http.ServeContent(w, r, "", st.ModTime(), f)
		case http.MethodPost:
			tmp, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
			if err == nil {
				_, err = io.Copy(tmp, r.Body)
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = os.Rename(tmp.Name(), file)
				}
				if err != nil {
					os.Remove(tmp.Name())
				}
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		case http.MethodDelete:
			if err := os.Remove(file); err != nil {
				http.NotFound(w, r)
			}
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
}

const restV2 = "application/vnd.x.restic.rest.v2"

func restList(w http.ResponseWriter, r *http.Request, dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	type obj struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
	}
	names, objs := []string{}, []obj{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		names = append(names, e.Name())
		objs = append(objs, obj{e.Name(), info.Size()})
	}
	if strings.Contains(r.Header.Get("Accept"), restV2) {
		w.Header().Set("Content-Type", restV2)
		_ = json.NewEncoder(w).Encode(objs)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.x.restic.rest.v1")
	_ = json.NewEncoder(w).Encode(names)
}
