package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// podSpec is what the test takes from the rendered DaemonSet to run the
// agent's container as the kubelet would: every setting is derived from the
// chart, and a setting the test does not know how to carry out fails it
// rather than being dropped.
type podSpec struct {
	opts        []oci.SpecOpts
	caps        []string // CAP_ names the container holds (drop ALL + add)
	missing     []string // the chart's capabilities this host cannot grant
	hostNetwork bool
	port        string // the agent's --listen port
	args        []string
}

// derivePodSpec turns the DaemonSet's pod template into containerd spec
// options. configDir holds the ConfigMap's files; emptyDirs is where
// emptyDir volumes are made (one directory each, as the kubelet does on
// disk); entrypoint is the image's.
func derivePodSpec(t *testing.T, ds *appsv1.DaemonSet, agent corev1.Container, configDir, emptyDirs string, entrypoint []string) podSpec {
	t.Helper()
	pod := ds.Spec.Template.Spec
	var ps podSpec
	add := func(o ...oci.SpecOpts) { ps.opts = append(ps.opts, o...) }

	// Namespaces. The runtime gives a pod its own network, IPC and UTS
	// namespaces unless the pod asks for the host's, and (as containerd's
	// CRI plugin does on cgroup v2 nodes) a private cgroup namespace, which
	// the agent must leave by itself.
	if pod.HostIPC {
		add(oci.WithHostNamespace(specs.IPCNamespace))
	}
	if pod.HostPID {
		add(oci.WithHostNamespace(specs.PIDNamespace))
	} else {
		t.Fatal("the chart's DaemonSet does not set hostPID: the agent reads every process of the node through /proc")
	}
	if pod.HostNetwork {
		ps.hostNetwork = true
		add(oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	add(oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}))

	// The process: the image's entrypoint with the container's args (a
	// command would replace the entrypoint).
	argv := slices.Clone(entrypoint)
	if len(agent.Command) > 0 {
		argv = slices.Clone(agent.Command)
	}
	argv = append(argv, agent.Args...)
	ps.args = agent.Args
	add(oci.WithProcessArgs(argv...))
	for i, a := range agent.Args {
		if a == "--listen" && i+1 < len(agent.Args) {
			_, port, ok := strings.Cut(agent.Args[i+1], ":")
			if !ok {
				t.Fatalf("the container's --listen %q has no port", agent.Args[i+1])
			}
			ps.port = port
		}
	}
	if ps.port == "" {
		t.Fatalf("the container's args %q have no --listen", agent.Args)
	}

	var env []string
	node, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range agent.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env = append(env, e.Name+"="+node)
		default:
			t.Fatalf("env %s: a source the test cannot carry out: %+v", e.Name, e.ValueFrom)
		}
	}
	if len(env) > 0 {
		add(oci.WithEnv(env))
	}

	// The security context.
	sc := agent.SecurityContext
	if sc == nil {
		t.Fatal("the agent container has no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatal("the chart renders a privileged container by default; this test runs the capability set")
	}
	if sc.RunAsUser == nil || sc.RunAsGroup == nil {
		t.Fatal("securityContext: runAsUser and runAsGroup must be set")
	}
	add(oci.WithUIDGID(uint32(*sc.RunAsUser), uint32(*sc.RunAsGroup)))
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		add(oci.WithRootFSReadonly())
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		add(oci.WithNoNewPrivileges)
	} else {
		add(oci.WithNewPrivileges)
	}
	self, err := procCaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	hostBounding := self["CapBnd"]
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Fatalf("securityContext.capabilities.drop = %v, want [ALL]", sc.Capabilities)
	}
	for _, c := range sc.Capabilities.Add {
		name := "CAP_" + strings.ToUpper(string(c))
		if _, ok := capNumbers[name]; !ok {
			t.Fatalf("securityContext.capabilities.add: %q is not a capability this kernel knows", c)
		}
		if hostBounding&(1<<capNumbers[name]) == 0 {
			// No runtime can grant what the runtime itself lacks: runc
			// fails with "unable to apply caps". (This project's test
			// machines lack CAP_SYS_RESOURCE, which the agent needs only
			// on kernels before 5.11.)
			t.Logf("capability %s from the chart is not in this host's own bounding set; the container runs without it", name)
			ps.missing = append(ps.missing, name)
			continue
		}
		ps.caps = append(ps.caps, name)
	}
	add(oci.WithCapabilities(ps.caps))
	// The runtime's default seccomp and AppArmor profiles block bpf(2); the
	// chart asks for Unconfined, which is what a plain spec has. Anything
	// else is a profile this test does not load.
	if p := sc.SeccompProfile; p != nil && p.Type != corev1.SeccompProfileTypeUnconfined {
		t.Fatalf("seccompProfile %q: the test runs Unconfined only", p.Type)
	}
	if p := sc.AppArmorProfile; p != nil && p.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Fatalf("appArmorProfile %q: the test runs Unconfined only", p.Type)
	}
	if sc.SELinuxOptions != nil || sc.WindowsOptions != nil || sc.ProcMount != nil {
		t.Fatalf("securityContext has settings the test does not carry out: %+v", sc)
	}

	// The memory limit (the kubelet passes it to the runtime).
	if q, ok := agent.Resources.Limits[corev1.ResourceMemory]; ok {
		add(oci.WithMemoryLimit(uint64(q.Value())))
	}

	// Volumes: hostPath and emptyDir become rbind mounts (rprivate, as the
	// kubelet does without mountPropagation), a ConfigMap a read-only bind of
	// its files.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	var mounts []specs.Mount
	for _, m := range agent.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("volumeMount %s: no such volume", m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" || m.MountPropagation != nil {
			t.Fatalf("volumeMount %s: subPath/mountPropagation are not carried out by this test", m.Name)
		}
		var src string
		switch {
		case v.HostPath != nil:
			src = v.HostPath.Path
			st, err := os.Stat(src)
			if err != nil {
				t.Fatalf("volume %s: hostPath %s: %v", v.Name, src, err)
			}
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectory && !st.IsDir() {
				t.Fatalf("volume %s: hostPath %s is not a directory", v.Name, src)
			}
		case v.EmptyDir != nil:
			src = filepath.Join(emptyDirs, v.Name)
			if err := os.MkdirAll(src, 0o777); err != nil {
				t.Fatal(err)
			}
		case v.ConfigMap != nil:
			src = configDir
			if !m.ReadOnly {
				t.Errorf("volumeMount %s of a ConfigMap is not readOnly", m.Name)
			}
		default:
			t.Fatalf("volume %s: a kind the test does not carry out", v.Name)
		}
		opts := []string{"rbind", "rprivate"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		mounts = append(mounts, specs.Mount{Destination: m.MountPath, Type: "bind", Source: src, Options: opts})
	}
	add(withReplacedMounts(mounts))
	return ps
}

// withReplacedMounts adds mounts, first dropping the default spec's mounts
// at the same destinations (the CRI plugin does the same: a volume at
// /sys/fs/cgroup replaces the runtime's own cgroup mount).
func withReplacedMounts(mounts []specs.Mount) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		kept := s.Mounts[:0]
		for _, m := range s.Mounts {
			if !slices.ContainsFunc(mounts, func(n specs.Mount) bool {
				return filepath.Clean(n.Destination) == filepath.Clean(m.Destination)
			}) {
				kept = append(kept, m)
			}
		}
		s.Mounts = append(kept, mounts...)
		return nil
	}
}

// capNumbers maps capability names to their numbers.
var capNumbers = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
	"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
	"CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP,
	"CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	"CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
	"CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE,
	"CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "CAP_SYS_TIME": unix.CAP_SYS_TIME,
	"CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "CAP_MKNOD": unix.CAP_MKNOD,
	"CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "CAP_SETFCAP": unix.CAP_SETFCAP,
	"CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "CAP_AUDIT_READ": unix.CAP_AUDIT_READ,
	"CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// capMask is the bit mask /proc/PID/status shows for a set of capabilities.
func capMask(caps []string) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << capNumbers[c]
	}
	return m
}

// procCaps reads a process's capability sets from /proc/PID/status.
func procCaps(pid int) (map[string]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":\t")
		if ok && strings.HasPrefix(k, "Cap") {
			var n uint64
			if _, err := fmt.Sscanf(v, "%x", &n); err != nil {
				return nil, fmt.Errorf("%s: %v", l, err)
			}
			out[k] = n
		}
	}
	return out, nil
}
