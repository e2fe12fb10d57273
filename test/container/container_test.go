// Package container runs the agent the way the Helm chart deploys it, under
// a real container runtime (containerd and runc, started by the test on its
// own socket and directories), against a real hung restic in another
// container: nothing mocked.
//
// Run it as root: go test ./test/container/ (make test does).
package container

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"overtime/agent"
	"overtime/internal/charttest"
	"overtime/internal/node"
	"overtime/internal/ociimage"
	"overtime/internal/procstat"
	"overtime/internal/testtool"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"
)

const (
	repoRoot = "../.."
	chartDir = "../../charts/overtime"
	// The snapshotter containerd uses for both images.
	snapshotter = "overlayfs"
)

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(testtool.RequireEnv) != "" {
		t.Fatalf("the container test runs as root (containerd, runc, eBPF), and %s is set", testtool.RequireEnv)
	}
	t.Skipf("the container test runs as root (set %s to make this a failure)", testtool.RequireEnv)
}

// TestAgentInContainer runs the agent in a container made from the chart's
// rendered DaemonSet, and a hung restic backup in a second container, and
// checks that the agent ends the restic tree and nothing else, names the
// container, removes the lock inside that container only, and leaves the
// container to the runtime in a state it can stop and delete.
func TestAgentInContainer(t *testing.T) {
	requireRoot(t)
	containerd := testtool.Find(t, "containerd")
	testtool.Find(t, "containerd-shim-runc-v2")
	testtool.Find(t, "runc")
	busybox := testtool.Find(t, "busybox")
	restic := testtool.Find(t, "restic")
	if !staticELF(t, busybox) {
		t.Fatalf("%s is not statically linked: the workload image has no libc of its own (install busybox-static)", busybox)
	}

	start := time.Now()
	id := randHex(t, 4)
	prefix := "overtime-ct-" + id // names the namespace and the cgroups
	dir := t.TempDir()

	// 1. The images: the agent's by `make image`'s code path, the workload's
	// (busybox and restic) by the same writer.
	agentTar := filepath.Join(dir, "overtime-image.tar")
	agentRef, err := ociimage.BuildAgent(context.Background(), repoRoot, agentTar, "ct-"+id, "test")
	if err != nil {
		t.Fatal(err)
	}
	workTar := filepath.Join(dir, "workload-image.tar")
	workRef := "docker.io/library/overtime-ct-workload:" + id
	writeWorkloadImage(t, workTar, workRef, busybox, restic)
	t.Logf("images built in %v", time.Since(start).Round(time.Millisecond))

	// 2. containerd of our own.
	d := startContainerd(t, containerd, filepath.Join(dir, "containerd"), prefix)
	t.Cleanup(func() { removeCgroups(t, prefix) })
	ctx := d.ctx()
	agentImg := importImage(t, d, agentTar, agentRef)
	workImg := importImage(t, d, workTar, workRef)

	// 3. The chart, rendered with a short restic rule limited to this
	// test's cgroups (other tests' restics on this node are not its to end).
	podUID := uuid(t)
	ruleCgroup := "*/" + prefix + "/*"
	rules := fmt.Sprintf(`[{"name":"restic","match":{"comm":["restic"],"args":["backup"],"cgroup":[%q]},`+
		`"timeout":"8s","kill":{"signal":"SIGHUP","grace":"3s"},"cleanup":{"when":["killed"],"paths":["**/locks/*"]}}]`, ruleCgroup)
	ms := charttest.Render(t, chartDir, "--set-json", "config.rules="+rules, "--set", "logLevel=debug")
	ds := charttest.DaemonSet(t, ms)
	agentC := charttest.AgentContainer(t, ds)
	cm := charttest.ConfigMap(t, ms, charttest.ReleaseName)
	configDir := filepath.Join(dir, "configmap")
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range cm.Data {
		if err := os.WriteFile(filepath.Join(configDir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	imgSpec, err := agentImg.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps := derivePodSpec(t, ds, agentC, configDir, filepath.Join(dir, "emptydir"), imgSpec.Config.Entrypoint)
	t.Logf("agent container from the chart: args %q, capabilities %v, hostNetwork %v", ps.args, ps.caps, ps.hostNetwork)

	// 4. The agent's container.
	agentID := randHex(t, 32)
	agentCgroup := "/" + prefix + "/kubepods/pod" + uuid(t) + "/" + agentID
	agentLog := filepath.Join(dir, "agent.log")
	agentTask := runContainer(t, d, agentID, agentImg, agentLog,
		append([]oci.SpecOpts{oci.WithImageConfig(agentImg), oci.WithHostname("overtime-agent"), oci.WithCgroup(agentCgroup)}, ps.opts...)...)
	agentPID := int(agentTask.Pid())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", readFile(agentLog))
		}
	})
	api := newAPI(t, agentPID, ps)
	waitFor(t, 60*time.Second, "the agent's /readyz to answer 200", func() bool {
		if st, err := agentTask.Status(ctx); err == nil && st.Status == client.Stopped {
			t.Fatalf("the agent container exited (%d) before ready:\n%s", st.ExitStatus, readFile(agentLog))
		}
		code, _ := api.get("/readyz")
		return code == 200
	})
	t.Logf("agent ready %v after start", time.Since(start).Round(time.Millisecond))

	// The agent runs with exactly the chart's capabilities...
	caps, err := procCaps(agentPID)
	if err != nil {
		t.Fatal(err)
	}
	want := capMask(ps.caps)
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if caps[set] != want {
			t.Errorf("agent %s = %016x, want %016x (the chart's %v)", set, caps[set], want, ps.caps)
		}
	}
	// ... and re-entered the host's cgroup namespace from the private one
	// the runtime gave it.
	if got, want := nsIno(t, fmt.Sprintf("/proc/%d/ns/cgroup", agentPID)), nsIno(t, "/proc/self/ns/cgroup"); got != want {
		t.Errorf("agent cgroup namespace %d, the host's %d: it did not re-enter the host's", got, want)
	}
	// (It starts in the private one the spec asks for, and says so.)
	if !strings.Contains(readFile(agentLog), `"msg":"joined the host cgroup namespace"`) {
		t.Errorf("the agent did not log joining the host cgroup namespace: did it start in a private one?")
	}

	// 5. The workload: restic init, a neighbour, then a backup of stdin that
	// never ends (a FIFO the shell holds open for writing). SIGHUP (the rule's signal) is ignored by the backup, as a
	// hung engine ignores the polite signal, so the tree is overdue for the
	// grace and is then killed through its cgroup.
	repo := filepath.Join(dir, "repo") // the same path exists on the host
	workID := randHex(t, 32)
	workCgroup := "/" + prefix + "/kubepods/besteffort/pod" + podUID + "/" + workID
	script := `restic init -q --repo "$REPO" || exit 1
sleep 100001 &
echo $! > /tmp/neighbour.pid
trap '' HUP
mkfifo /tmp/stdin
exec 3<>/tmp/stdin
restic backup --no-cache --repo "$REPO" --stdin --stdin-filename hung.bin </tmp/stdin
echo "restic ended: $?"
wait
`
	workLog := filepath.Join(dir, "workload.log")
	workTask := runContainer(t, d, workID, workImg, workLog,
		oci.WithImageConfig(workImg), oci.WithHostname("workload"), oci.WithCgroup(workCgroup),
		oci.WithProcessArgs("/bin/sh", "-c", script),
		oci.WithEnv([]string{"REPO=" + repo, "RESTIC_PASSWORD=overtime-ct", "TMPDIR=/tmp", "HOME=/tmp"}))
	shPID := int(workTask.Pid())

	var resticPID, neighbourPID int
	var lockName string
	waitFor(t, 60*time.Second, "restic backup holding its lock in the workload container", func() bool {
		if st, err := workTask.Status(ctx); err == nil && st.Status == client.Stopped {
			t.Fatalf("the workload exited (%d):\n%s", st.ExitStatus, readFile(workLog))
		}
		resticPID, neighbourPID = 0, 0
		for _, p := range descendants(shPID) {
			args := cmdline(p)
			switch {
			case len(args) > 1 && filepath.Base(args[0]) == "restic" && slices.Contains(args, "backup"):
				resticPID = p
			case slices.Equal(args, []string{"sleep", "100001"}):
				neighbourPID = p
			}
		}
		if resticPID == 0 {
			return false
		}
		// restic writes a file as NAME-tmp-RANDOM, then renames it: the
		// lock is the one name without that suffix.
		names, _ := os.ReadDir(fmt.Sprintf("/proc/%d/root%s/locks", resticPID, repo))
		if len(names) == 1 && !strings.Contains(names[0].Name(), "-tmp-") {
			lockName = names[0].Name()
			return true
		}
		return false
	})
	if neighbourPID == 0 {
		t.Fatal("the workload's neighbour sleep not found")
	}
	lockPath := filepath.Join(repo, "locks", lockName)
	cg := readFile(fmt.Sprintf("/proc/%d/cgroup", resticPID))
	t.Logf("restic %d in the workload container; its cgroups:\n%s", resticPID, cg)
	v2 := cgroupV2Path(cg)
	gotPod, gotCtr := node.ParsePod(v2)
	t.Logf("v2 cgroup path %q: ParsePod gives pod %q container %q", v2, gotPod, gotCtr)

	// A file at the lock's path on the host: the agent must not touch it.
	hostData := []byte("the host's own file, at the path of the container's lock\n")
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lockPath, hostData, 0o400); err != nil {
		t.Fatal(err)
	}

	// 6. The agent tracks restic, names its container, and puts it in a
	// cgroup of its own under the container's.
	var tracked agent.ProcessInfo
	var procs []agent.ProcessInfo
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last /api/v1/processes: %+v", procs)
		}
	})
	waitFor(t, 8*time.Second, "restic tracked with its lock created", func() bool {
		procs = nil
		api.getJSON("/api/v1/processes", &procs)
		for _, p := range procs {
			if p.PID == resticPID && slices.Contains(p.CreatedFiles, lockPath) {
				tracked = p
				return true
			}
		}
		return false
	})
	if tracked.ContainerID != workID {
		t.Errorf("API container_id %q, want %q (from cgroup %s)", tracked.ContainerID, workID, tracked.Cgroup)
	}
	if tracked.PodUID != podUID {
		t.Errorf("API pod_uid %q, want %q", tracked.PodUID, podUID)
	}
	treeCg := cgroupV2Path(readFile(fmt.Sprintf("/proc/%d/cgroup", resticPID)))
	if !strings.HasPrefix(treeCg, workCgroup+"/overtime.restic.") {
		t.Errorf("restic's cgroup is %q, want a child overtime.restic.* of the container's %s", treeCg, workCgroup)
	}

	series := fmt.Sprintf(`overtime_overdue_process_info{comm="restic",container_id="%s",pid="%d",pod_uid="%s",rule="restic"} 1`, workID, resticPID, podUID)
	waitFor(t, 15*time.Second, "restic overdue in the metrics: "+series, func() bool {
		_, body := api.get("/metrics")
		return strings.Contains(body, series)
	})
	waitFor(t, 15*time.Second, "restic ended", func() bool { return !alive(resticPID) })

	// 7. Only restic ended.
	for name, pid := range map[string]int{"the container's shell": shPID, "the neighbour": neighbourPID} {
		if !alive(pid) {
			t.Errorf("%s (%d) was ended too", name, pid)
		}
	}
	waitFor(t, 15*time.Second, "the lock removed", func() bool {
		_, body := api.get("/metrics")
		return strings.Contains(body, `overtime_cleanup_removed_files_total{rule="restic"} 1`)
	})
	if _, err := os.Lstat(fmt.Sprintf("/proc/%d/root%s", shPID, lockPath)); !os.IsNotExist(err) {
		t.Errorf("the lock %s is still in the workload container (%v)", lockPath, err)
	}
	if b, err := os.ReadFile(lockPath); err != nil || !bytes.Equal(b, hostData) {
		t.Errorf("the host's file at %s: %q, %v; want it untouched", lockPath, b, err)
	}
	// restic died of SIGKILL (128+9): the cgroup kill after the grace, as
	// it ignored the rule's SIGHUP.
	waitFor(t, 5*time.Second, "the workload's shell to report restic's end", func() bool {
		return strings.Contains(readFile(workLog), "restic ended: 137")
	})
	t.Logf("workload output: %q", readFile(workLog))
	for name, pid := range map[string]int{"the container's shell": shPID, "the neighbour": neighbourPID} {
		if !alive(pid) {
			t.Errorf("%s (%d) ended after restic", name, pid)
		}
	}

	// The agent named the container in its logs too.
	logs := readFile(agentLog)
	if !logMentions(logs, resticPID, workID) {
		t.Errorf("no agent log record for restic %d names container_id %s:\n%s", resticPID, workID, logs)
	}

	// 8. No cgroup of the agent's is left under the container's.
	waitFor(t, 10*time.Second, "the tree's cgroup removed", func() bool {
		return len(overtimeCgroups(t, workCgroup)) == 0
	})

	// 9. The runtime can stop and delete the workload.
	stopContainer(t, d, workID, workTask)
	// And the agent, as the kubelet stops it: SIGTERM, a clean exit.
	if code := stopAgent(t, d, agentID, agentTask); code != 0 {
		t.Errorf("the agent exited %d on SIGTERM:\n%s", code, readFile(agentLog))
	}
	for _, ref := range []string{agentRef, workRef} {
		if err := d.client.ImageService().Delete(ctx, ref, images.SynchronousDelete()); err != nil {
			t.Errorf("delete image %s: %v", ref, err)
		}
	}
	if sn, err := listSnapshots(ctx, d); err != nil || len(sn) != 0 {
		t.Errorf("snapshots left: %v %v", sn, err)
	}
	if t.Failed() {
		t.Logf("workload log:\n%s", readFile(workLog))
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

// ---- images ----------------------------------------------------------------

func staticELF(t *testing.T, path string) bool {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// writeWorkloadImage: a static busybox (sh, sleep) and restic with the
// shared libraries it links, on an empty base.
func writeWorkloadImage(t *testing.T, out, ref, busybox, restic string) {
	t.Helper()
	files := []ociimage.File{
		{Path: "/bin/busybox", Mode: 0o755, Src: busybox},
		{Path: "/bin/sh", Link: "busybox"},
		{Path: "/bin/sleep", Link: "busybox"},
		{Path: "/bin/mkfifo", Link: "busybox"},
		{Path: "/bin/restic", Mode: 0o755, Src: restic},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")},
		{Path: "/tmp", Dir: true, Mode: 0o777 | os.ModeSticky},
	}
	if !staticELF(t, restic) {
		ldd, err := exec.Command("ldd", restic).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", restic, err)
		}
		for _, l := range strings.Split(string(ldd), "\n") {
			var lib string
			if _, after, ok := strings.Cut(l, "=> "); ok {
				lib, _, _ = strings.Cut(after, " ")
			} else if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "/") {
				lib = f[0]
			}
			if lib == "" {
				continue
			}
			real, err := filepath.EvalSymlinks(lib)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, ociimage.File{Path: lib, Mode: 0o755, Src: real})
		}
	}
	img := ociimage.Image{Name: ref, Files: files, Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/sh"}}
	if err := ociimage.WriteFile(out, img); err != nil {
		t.Fatal(err)
	}
}

func importImage(t *testing.T, d *daemon, tarPath, ref string) client.Image {
	t.Helper()
	ctx := d.ctx()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := d.client.Import(ctx, f)
	if err != nil {
		t.Fatalf("import %s: %v", tarPath, err)
	}
	var names []string
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	if !slices.Contains(names, ref) {
		t.Fatalf("import %s: images %v, want %s", tarPath, names, ref)
	}
	t.Cleanup(func() { _ = d.client.ImageService().Delete(ctx, ref, images.SynchronousDelete()) })
	img, err := d.client.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Unpack(ctx, snapshotter); err != nil {
		t.Fatalf("unpack %s: %v", ref, err)
	}
	return img
}

// ---- containers --------------------------------------------------------------

// runContainer creates and starts a container; its stdout and stderr go to
// logPath. Cleanup kills and deletes what is left of it.
func runContainer(t *testing.T, d *daemon, id string, img client.Image, logPath string, opts ...oci.SpecOpts) client.Task {
	t.Helper()
	ctx := d.ctx()
	c, err := d.client.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithSnapshotter(snapshotter),
		client.WithNewSnapshot(id+"-rootfs", img),
		client.WithNewSpec(opts...))
	if err != nil {
		t.Fatalf("create container %s: %v", id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(d.ctx(), 30*time.Second)
		defer cancel()
		if task, err := c.Task(ctx, nil); err == nil {
			_ = task.Kill(ctx, syscall.SIGKILL)
			if ch, err := task.Wait(ctx); err == nil {
				select {
				case <-ch:
				case <-ctx.Done():
				}
			}
			_, _ = task.Delete(ctx, client.WithProcessKill)
		}
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
	})
	task, err := c.NewTask(ctx, cio.LogFile(logPath))
	if err != nil {
		t.Fatalf("create task %s: %v", id, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start task %s: %v\n%s", id, err, readFile(logPath))
	}
	return task
}

// stopContainer kills the task, deletes it and the container, each step
// required to succeed.
func stopContainer(t *testing.T, d *daemon, id string, task client.Task) {
	t.Helper()
	ctx, cancel := context.WithTimeout(d.ctx(), 30*time.Second)
	defer cancel()
	ch, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("wait task %s: %v", id, err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil {
		t.Fatalf("kill task %s: %v", id, err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("task %s did not stop", id)
	}
	deleteContainer(t, d, id, task)
}

func deleteContainer(t *testing.T, d *daemon, id string, task client.Task) {
	t.Helper()
	ctx, cancel := context.WithTimeout(d.ctx(), 30*time.Second)
	defer cancel()
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("delete task %s: %v", id, err)
	}
	c, err := d.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container %s: %v", id, err)
	}
}

// stopAgent sends SIGTERM as the kubelet does and returns the exit code.
func stopAgent(t *testing.T, d *daemon, id string, task client.Task) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(d.ctx(), 30*time.Second)
	defer cancel()
	ch, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM the agent: %v", err)
	}
	var code uint32
	select {
	case st := <-ch:
		code = st.ExitCode()
	case <-ctx.Done():
		t.Fatal("the agent did not stop on SIGTERM in 30s")
	}
	deleteContainer(t, d, id, task)
	return int(code)
}

func listSnapshots(ctx context.Context, d *daemon) ([]string, error) {
	var out []string
	err := d.client.SnapshotService(snapshotter).Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		out = append(out, i.Name)
		return nil
	})
	return out, err
}

// ---- the agent's API, in the container's network namespace ------------------

type apiClient struct {
	t    *testing.T
	base string
	http *http.Client
}

// newAPI reaches the agent's listen port: on the host when the chart runs
// it in the host network namespace, otherwise through the container's own
// network namespace (its loopback), entered by one locked thread per dial.
func newAPI(t *testing.T, pid int, ps podSpec) *apiClient {
	a := &apiClient{t: t, base: "http://127.0.0.1:" + ps.port}
	tr := &http.Transport{DisableKeepAlives: true}
	if !ps.hostNetwork {
		netns := fmt.Sprintf("/proc/%d/ns/net", pid)
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			type res struct {
				c   net.Conn
				err error
			}
			ch := make(chan res, 1)
			go func() {
				// The thread is never unlocked: it leaves with the goroutine.
				runtime.LockOSThread()
				fd, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					ch <- res{nil, err}
					return
				}
				defer unix.Close(fd)
				if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
					ch <- res{nil, fmt.Errorf("setns %s: %w", netns, err)}
					return
				}
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				ch <- res{c, err}
			}()
			r := <-ch
			return r.c, r.err
		}
	}
	a.http = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	return a
}

func (a *apiClient) get(path string) (int, string) {
	resp, err := a.http.Get(a.base + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *apiClient) getJSON(path string, v any) {
	a.t.Helper()
	code, body := a.get(path)
	if code != 200 {
		a.t.Fatalf("%s: %d %s", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		a.t.Fatalf("%s: %v", path, err)
	}
}

// ---- processes, cgroups, logs ------------------------------------------------

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func nsIno(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has ended too.
	st, err := procstat.ParseStat(b)
	return err != nil || st.State != 'Z'
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// descendants lists every process below pid, from /proc/PID/task/*/children.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, tk := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, tk.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
					queue = append(queue, c)
				}
			}
		}
	}
	return out
}

// cgroupV2Path is the "0::" line of /proc/PID/cgroup.
func cgroupV2Path(procCgroup string) string {
	return procstat.V2Path(procCgroup)
}

// cgroupMounts lists the cgroup (v1) and cgroup2 mount points.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		if len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") {
			out = append(out, unescapeMount(strings.Fields(pre)[4]))
		}
	}
	return out
}

// overtimeCgroups lists overtime.* cgroups at any depth under the cgroup
// path in every hierarchy.
func overtimeCgroups(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, m := range cgroupMounts(t) {
		_ = filepath.WalkDir(filepath.Join(m, path), func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() && strings.HasPrefix(e.Name(), "overtime.") {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// removeCgroups removes the test's cgroup tree (/<prefix>/...) in every
// hierarchy: runc removes a container's own cgroup, not its parents.
func removeCgroups(t *testing.T, prefix string) {
	for _, m := range cgroupMounts(t) {
		root := filepath.Join(m, prefix)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// logMentions: a JSON log record about pid that carries container_id.
func logMentions(logs string, pid int, containerID string) bool {
	for _, l := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil {
			continue
		}
		if p, ok := rec["pid"].(float64); ok && int(p) == pid && rec["container_id"] == containerID {
			return true
		}
	}
	return false
}

func uuid(t *testing.T) string {
	h := randHex(t, 16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:32]
}
