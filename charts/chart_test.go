package charts

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"overtime/agent"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"overtime/internal/charttest"
	"overtime/internal/testtool"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart under test, relative to this package.
const chartDir = "overtime"

const (
	releaseName      = charttest.ReleaseName
	releaseNamespace = charttest.ReleaseNamespace
)

// registryMetricNames returns the names the agent registers on its
// Prometheus registry (histograms by their base name), from its real
// descriptors.
var registryMetricNames = agent.MetricNames

// The capabilities the agent container adds after dropping ALL. See
// overtime/values.yaml and overtime/README.md for why each is needed.
var wantCapabilities = []string{
	"BPF", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN", "KILL", "SYS_PTRACE",
	"DAC_READ_SEARCH", "DAC_OVERRIDE", "FOWNER", "LEASE",
}

// The alerts the contract names, in the order the PrometheusRule lists them.
var wantAlerts = []string{
	"OvertimeProcessLeaked",
	"OvertimeKillFailed",
	"OvertimeOrphanedProcess",
	"OvertimeZombiesAccumulating",
	"OvertimeCleanupErrors",
	"OvertimeEventsLost",
	"OvertimeAgentDown",
}

// Values that turn on every optional part of the chart except privileged
// (which removes the capability set and is tested on its own).
var allOptional = []string{
	"--set", "serviceMonitor.enabled=true",
	"--set", "prometheusRule.enabled=true",
	"--set", "dashboards.enabled=true",
	"--set", "dashboards.folder=Backups",
	"--set", "mounts.debugfs=true",
	"--set", "securityContext.appArmorLegacyAnnotation=true",
}

// ---- tools and rendering (shared with test/container: internal/charttest) ----

// tool finds a command the test runs (see testtool.Find).
func tool(t *testing.T, name string) string { return testtool.Find(t, name) }

// run runs a command and returns its stdout; stderr goes into the error.
func run(bin string, args ...string) (string, error) { return charttest.Run(bin, args...) }

func mustRun(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := run(bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// manifest is one document of `helm template` output.
type manifest = charttest.Manifest

// helmTemplate renders the chart with extra helm arguments.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return charttest.Template(t, chartDir, args...)
}

// render renders the chart and splits it into its manifests.
func render(t *testing.T, args ...string) []manifest {
	t.Helper()
	return charttest.Render(t, chartDir, args...)
}

// strict decodes a manifest into out, failing on unknown or duplicate fields.
func strict(t *testing.T, m manifest, out any) {
	t.Helper()
	charttest.Strict(t, m, out)
}

// only returns the single manifest of kind (and name, if not empty).
func only(t *testing.T, ms []manifest, kind, name string) manifest {
	t.Helper()
	return charttest.Only(t, ms, kind, name)
}

func kinds(ms []manifest) []string {
	var ks []string
	for _, m := range ms {
		ks = append(ks, m.Kind)
	}
	sort.Strings(ks)
	return ks
}

// ---- local mirrors of the prometheus-operator CRDs (the fields we use) ----

type crdMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type relabelConfig struct {
	Action       string   `json:"action,omitempty"`
	SourceLabels []string `json:"sourceLabels,omitempty"`
	Separator    string   `json:"separator,omitempty"`
	TargetLabel  string   `json:"targetLabel,omitempty"`
	Regex        string   `json:"regex,omitempty"`
	Replacement  string   `json:"replacement,omitempty"`
	Modulus      uint64   `json:"modulus,omitempty"`
}

type serviceMonitor struct {
	APIVersion string  `json:"apiVersion"`
	Kind       string  `json:"kind"`
	Metadata   crdMeta `json:"metadata"`
	Spec       struct {
		JobLabel string `json:"jobLabel,omitempty"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port              string          `json:"port"`
			Path              string          `json:"path,omitempty"`
			Scheme            string          `json:"scheme,omitempty"`
			Interval          string          `json:"interval,omitempty"`
			ScrapeTimeout     string          `json:"scrapeTimeout,omitempty"`
			HonorLabels       bool            `json:"honorLabels,omitempty"`
			Relabelings       []relabelConfig `json:"relabelings,omitempty"`
			MetricRelabelings []relabelConfig `json:"metricRelabelings,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name     string      `json:"name"`
	Interval string      `json:"interval,omitempty"`
	Rules    []alertRule `json:"rules"`
}

type alertRule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type prometheusRule struct {
	APIVersion string  `json:"apiVersion"`
	Kind       string  `json:"kind"`
	Metadata   crdMeta `json:"metadata"`
	Spec       struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

// decodeAll decodes every manifest strictly into its type and fails on a
// kind the chart should not render.
func decodeAll(t *testing.T, ms []manifest) {
	t.Helper()
	for _, m := range ms {
		switch m.Kind {
		case "DaemonSet":
			strict(t, m, &appsv1.DaemonSet{})
		case "ConfigMap":
			strict(t, m, &corev1.ConfigMap{})
		case "Service":
			strict(t, m, &corev1.Service{})
		case "ServiceAccount":
			strict(t, m, &corev1.ServiceAccount{})
		case "ServiceMonitor":
			strict(t, m, &serviceMonitor{})
		case "PrometheusRule":
			strict(t, m, &prometheusRule{})
		default:
			t.Errorf("unexpected kind %s (%s) in the rendered chart", m.Kind, m.Source)
		}
	}
}

func daemonSet(t *testing.T, args ...string) *appsv1.DaemonSet {
	t.Helper()
	return charttest.DaemonSet(t, render(t, args...))
}

func agentContainer(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	return charttest.AgentContainer(t, ds)
}

// ---- lint and render -------------------------------------------------------

func TestHelmLint(t *testing.T) {
	helm := tool(t, "helm")
	mustRun(t, helm, "lint", chartDir)
	mustRun(t, helm, "lint", "--strict", chartDir)
	mustRun(t, helm, append([]string{"lint", "--strict", chartDir}, allOptional...)...)
	mustRun(t, helm, "lint", "--strict", chartDir, "--set", "privileged=true")
}

func TestRenderDefaults(t *testing.T) {
	ms := render(t)
	decodeAll(t, ms)
	want := []string{"ConfigMap", "DaemonSet", "Service", "ServiceAccount"}
	if got := kinds(ms); !slices.Equal(got, want) {
		t.Errorf("default render: kinds %v, want %v", got, want)
	}
	for _, m := range ms {
		var meta struct {
			Metadata crdMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(m.Doc, &meta); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"} {
			if meta.Metadata.Labels[l] == "" {
				t.Errorf("%s %s: no %s label", m.Kind, m.Name, l)
			}
		}
		if meta.Metadata.Namespace != releaseNamespace {
			t.Errorf("%s %s: namespace %q, want %q", m.Kind, m.Name, meta.Metadata.Namespace, releaseNamespace)
		}
	}

	var sa corev1.ServiceAccount
	strict(t, only(t, ms, "ServiceAccount", ""), &sa)
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("ServiceAccount: automountServiceAccountToken must be false")
	}

	var svc corev1.Service
	strict(t, only(t, ms, "Service", ""), &svc)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service: clusterIP %q, want None (headless)", svc.Spec.ClusterIP)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != 9477 || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("Service: ports %+v, want one named metrics on 9477", svc.Spec.Ports)
	}
	ds := daemonSet(t)
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the agent pods", k, v)
		}
	}
}

func TestRenderAllOptional(t *testing.T) {
	ms := render(t, allOptional...)
	decodeAll(t, ms)
	want := []string{"ConfigMap", "ConfigMap", "DaemonSet", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"}
	if got := kinds(ms); !slices.Equal(got, want) {
		t.Errorf("all optional parts: kinds %v, want %v", got, want)
	}

	var sm serviceMonitor
	strict(t, only(t, ms, "ServiceMonitor", ""), &sm)
	if sm.APIVersion != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %q", sm.APIVersion)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor: want one endpoint, got %d", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	if ep.Port != "metrics" || ep.Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoint port %q path %q, want metrics /metrics", ep.Port, ep.Path)
	}
	nodeRelabel := false
	for _, r := range ep.Relabelings {
		if slices.Equal(r.SourceLabels, []string{"__meta_kubernetes_pod_node_name"}) && r.TargetLabel == "node" && (r.Action == "" || r.Action == "replace") {
			nodeRelabel = true
		}
	}
	if !nodeRelabel {
		t.Errorf("ServiceMonitor: no relabeling copies __meta_kubernetes_pod_node_name into node: %+v", ep.Relabelings)
	}
	var svc corev1.Service
	strict(t, only(t, ms, "Service", ""), &svc)
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not select the Service", k, v)
		}
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{releaseNamespace}) {
		t.Errorf("ServiceMonitor namespaceSelector %v", sm.Spec.NamespaceSelector.MatchNames)
	}

	var dash corev1.ConfigMap
	strict(t, only(t, ms, "ConfigMap", releaseName+"-dashboard"), &dash)
	if dash.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap: label grafana_dashboard=%q, want \"1\"", dash.Labels["grafana_dashboard"])
	}
	if dash.Annotations["grafana_folder"] != "Backups" {
		t.Errorf("dashboard ConfigMap: folder annotation %q, want Backups", dash.Annotations["grafana_folder"])
	}
	file, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "overtime.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := dash.Data["overtime.json"]; strings.TrimSpace(got) != strings.TrimSpace(string(file)) {
		t.Error("dashboard ConfigMap: overtime.json differs from dashboards/overtime.json")
	}

	// And everything at once, privileged included.
	decodeAll(t, render(t, append(slices.Clone(allOptional), "--set", "privileged=true")...))

	ds := daemonSet(t, allOptional...)
	if got := ds.Spec.Template.Annotations["container.apparmor.security.beta.kubernetes.io/agent"]; got != "unconfined" {
		t.Errorf("legacy AppArmor annotation %q, want unconfined", got)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range agentContainer(t, ds).VolumeMounts {
		mounts[m.MountPath] = m
	}
	if m, ok := mounts["/sys/kernel/debug"]; !ok || !m.ReadOnly {
		t.Errorf("mounts.debugfs=true: /sys/kernel/debug mount %+v, want read-only", m)
	}
}

// TestNotes renders templates/NOTES.txt, which `helm template` skips: a copy
// of the chart wraps it in a ConfigMap.
func TestNotes(t *testing.T) {
	helm := tool(t, "helm")
	dir := filepath.Join(t.TempDir(), "overtime")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{{- define "overtime.notesCheck" -}}` + "\n" + string(notes) + "\n{{- end }}\n"
	wrap := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"overtime.notesCheck\" . | quote }}\n"
	for name, content := range map[string]string{"_notes_check.tpl": body, "notes-check.yaml": wrap} {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{nil, append([]string{"--set", "config.mode=monitor"}, allOptional...)} {
		base := []string{"template", releaseName, dir, "--namespace", releaseNamespace, "--show-only", "templates/notes-check.yaml"}
		out := mustRun(t, helm, append(base, args...)...)
		var cm corev1.ConfigMap
		strict(t, manifest{Kind: "ConfigMap", Doc: []byte(out)}, &cm)
		n := cm.Data["notes"]
		for _, want := range []string{"daemonset/" + releaseName, "pod-security.kubernetes.io/enforce=privileged", "longhorn: timeout 2m"} {
			if !strings.Contains(n, want) {
				t.Errorf("NOTES.txt (%v) lacks %q:\n%s", args, want, n)
			}
		}
	}
}

// ---- the DaemonSet -----------------------------------------------------------

func TestDaemonSet(t *testing.T) {
	ds := daemonSet(t)
	pod := ds.Spec.Template.Spec
	c := agentContainer(t, ds)

	if !pod.HostPID {
		t.Error("hostPID must be true")
	}
	if pod.HostNetwork {
		t.Error("hostNetwork must be false")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be false: the agent needs no API access")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !reflect.DeepEqual(pod.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v (every taint)", pod.Tolerations, want)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
		ds.Spec.UpdateStrategy.RollingUpdate == nil || ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1", ds.Spec.UpdateStrategy)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}

	wantArgs := []string{"run", "--config", "/etc/overtime/config.yaml", "--listen", "0.0.0.0:9477", "--log-format", "json", "--log-level", "info"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	extra := agentContainer(t, daemonSet(t, "--set-json", `extraArgs=["--file-tracing-idle","5m"]`)).Args
	if want := append(slices.Clone(wantArgs), "--file-tracing-idle", "5m"); !slices.Equal(extra, want) {
		t.Errorf("args with extraArgs %q, want %q", extra, want)
	}
	if len(c.Command) != 0 {
		t.Errorf("command %q: the image's ENTRYPOINT must be used", c.Command)
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("no NODE_NAME env from spec.nodeName")
	}

	// Security context.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged must be false by default")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false by default")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0: the capabilities are granted to root")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	var add []string
	for _, c := range sc.Capabilities.Add {
		add = append(add, string(c))
	}
	if got, want := slices.Sorted(slices.Values(add)), slices.Sorted(slices.Values(wantCapabilities)); !slices.Equal(got, want) {
		t.Errorf("capabilities.add %v, want exactly %v", got, want)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined {
		t.Errorf("seccompProfile %+v, want Unconfined", sc.SeccompProfile)
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("appArmorProfile %+v, want Unconfined", sc.AppArmorProfile)
	}

	// Mounts: name → host path, mount path, read-only.
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	type mount struct {
		host string
		ro   bool
	}
	got := map[string]mount{}
	for _, m := range c.VolumeMounts {
		got[m.MountPath] = mount{hostPaths[m.Name], m.ReadOnly}
	}
	want := map[string]mount{
		"/etc/overtime":  {"", true},
		"/sys/fs/cgroup": {"/sys/fs/cgroup", false},
		"/sys/kernel":    {"/sys/kernel", true},
		"/sys/fs/bpf":    {"/sys/fs/bpf", false},
		"/tmp":           {"", false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mounts %+v, want %+v", got, want)
	}
	for _, v := range pod.Volumes {
		if v.Name == "config" && (v.ConfigMap == nil || v.ConfigMap.Name != releaseName) {
			t.Errorf("config volume %+v, want ConfigMap %s", v, releaseName)
		}
	}

	// Probes on the metrics port.
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9477 {
		t.Errorf("ports %+v, want one named metrics on 9477", c.Ports)
	}
	for name, p := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want httpGet %s", name, p.path)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe: httpGet %s on port %s, want %s on metrics", name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}

	// Resources.
	if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Requests.Memory().String() != "64Mi" || c.Resources.Limits.Memory().String() != "256Mi" {
		t.Errorf("resources %+v, want requests 50m/64Mi, limit 256Mi", c.Resources)
	}
}

func TestDaemonSetPrivileged(t *testing.T) {
	sc := agentContainer(t, daemonSet(t, "--set", "privileged=true")).SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Fatal("privileged=true: container not privileged")
	}
	// The API rejects allowPrivilegeEscalation=false with privileged=true.
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Error("privileged=true: allowPrivilegeEscalation must not be false")
	}
}

func TestConfigChecksumFollowsConfig(t *testing.T) {
	sum := func(args ...string) string {
		return daemonSet(t, args...).Spec.Template.Annotations["checksum/config"]
	}
	a, b := sum(), sum("--set", "config.mode=monitor")
	if a == "" || a == b {
		t.Errorf("checksum/config %q then %q: must exist and change with the config", a, b)
	}
	if c := sum("--set", "podAnnotations.x=y"); c != a {
		t.Errorf("checksum/config changed with an unrelated value: %q vs %q", a, c)
	}
}

// ---- the agent's config ----------------------------------------------------

// renderedConfig returns config.yaml from the chart's ConfigMap rendered with
// the default values. The lead wires the agent's own config parser to it.
func renderedConfig(t *testing.T) []byte {
	t.Helper()
	var cm corev1.ConfigMap
	strict(t, only(t, render(t), "ConfigMap", releaseName), &cm)
	cfg, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml: keys %v", releaseName, reflect.ValueOf(cm.Data).MapKeys())
	}
	return []byte(cfg)
}

// configFile mirrors the contract's config-file format; decoding strictly
// into it proves the chart writes no key the agent does not know.
type configFile struct {
	Mode   string `json:"mode"`
	Listen string `json:"listen,omitempty"`
	Rules  []struct {
		Name  string `json:"name"`
		Match struct {
			Comm   []string `json:"comm,omitempty"`
			Exe    []string `json:"exe,omitempty"`
			Args   []string `json:"args,omitempty"`
			Cgroup []string `json:"cgroup,omitempty"`
		} `json:"match"`
		Timeout    string `json:"timeout"`
		Stall      string `json:"stall,omitempty"`
		MaxRunning int    `json:"max_running,omitempty"`
		Kill       *struct {
			Signal string `json:"signal,omitempty"`
			Grace  string `json:"grace,omitempty"`
		} `json:"kill,omitempty"`
		Cleanup *struct {
			When  []string `json:"when,omitempty"`
			Paths []string `json:"paths,omitempty"`
		} `json:"cleanup,omitempty"`
	} `json:"rules"`
}

func TestRenderedConfig(t *testing.T) {
	raw := renderedConfig(t)
	// The agent's own parser, as `overtime run --config` uses it.
	if _, err := agent.ParseConfig("config.yaml", raw); err != nil {
		t.Fatalf("the agent refuses the rendered config:\n%v\n%s", err, raw)
	}
	var cfg configFile
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		t.Fatalf("config.yaml is not in the contract's format: %v\n%s", err, raw)
	}
	var top map[string]any
	if err := yaml.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	if _, ok := top["listen"]; ok {
		t.Error("config.yaml sets listen; the container's --listen flag owns it")
	}
	if cfg.Mode != "enforce" {
		t.Errorf("mode %q, want enforce", cfg.Mode)
	}
	var names []string
	for _, r := range cfg.Rules {
		names = append(names, r.Name)
		if !regexp.MustCompile(`^[a-z0-9-]+$`).MatchString(r.Name) {
			t.Errorf("rule name %q", r.Name)
		}
		if d, err := time.ParseDuration(r.Timeout); err != nil || d <= 0 {
			t.Errorf("rule %s: timeout %q is not a positive Go duration", r.Name, r.Timeout)
		}
		if r.Kill != nil && r.Kill.Grace != "" {
			if _, err := time.ParseDuration(r.Kill.Grace); err != nil {
				t.Errorf("rule %s: grace %q: %v", r.Name, r.Kill.Grace, err)
			}
		}
		if len(r.Match.Comm)+len(r.Match.Exe)+len(r.Match.Args)+len(r.Match.Cgroup) == 0 {
			t.Errorf("rule %s matches nothing", r.Name)
		}
		if r.Cleanup != nil {
			for _, p := range r.Cleanup.Paths {
				if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "**") || p == "**" || p == "/**" {
					t.Errorf("rule %s: cleanup path %q is relative or matches everything", r.Name, p)
				}
			}
		}
	}
	if want := []string{"longhorn", "longhorn-nfs-mount", "restic", "borg", "kopia"}; !slices.Equal(names, want) {
		t.Errorf("rules %v, want the embedded profiles %v", names, want)
	}

	// Spot checks of the profiles the brief fixes.
	byName := map[string]int{}
	for i, r := range cfg.Rules {
		byName[r.Name] = i
	}
	lh := cfg.Rules[byName["longhorn"]]
	if !slices.Equal(lh.Match.Exe, []string{"*/engine-binaries/*/longhorn"}) || lh.Timeout != "2m" ||
		lh.Kill == nil || lh.Kill.Signal != "SIGTERM" || lh.Kill.Grace != "10s" ||
		lh.Cleanup == nil || !slices.Equal(lh.Cleanup.Paths, []string{"**/locks/*.lck"}) || !slices.Equal(lh.Cleanup.When, []string{"killed"}) {
		t.Errorf("longhorn profile %+v", lh)
	}
	if r := cfg.Rules[byName["restic"]]; r.Cleanup == nil || !slices.Contains(r.Cleanup.Paths, "**/locks/*") {
		t.Errorf("restic profile %+v", r)
	}
	if r := cfg.Rules[byName["borg"]]; r.Timeout != "12h" || r.Cleanup == nil ||
		!slices.Equal(r.Cleanup.Paths, []string{"**/lock.exclusive", "**/lock.exclusive/*", "**/lock.exclusive.*.tmp", "**/lock.exclusive.*.tmp/*", "**/lock.roster"}) {
		t.Errorf("borg profile %+v", r)
	}
	for _, name := range []string{"restic", "borg", "kopia"} {
		if r := cfg.Rules[byName[name]]; r.Stall != "30m" {
			t.Errorf("%s profile: stall %q, want 30m", name, r.Stall)
		}
	}
	if lh.Stall != "" {
		t.Errorf("longhorn profile has a stall: %q", lh.Stall)
	}
	if r := cfg.Rules[byName["kopia"]]; r.Timeout != "12h" || !slices.Equal(r.Match.Args, []string{"snapshot", "create"}) {
		t.Errorf("kopia profile %+v", r)
	}
}

// TestRenderedConfigMatchesAgentDefaults checks that the chart's default
// rules are the profiles the agent embeds (agent/defaults.yaml), so a user
// of the chart gets the same behaviour as `overtime run` without --config.
func TestRenderedConfigMatchesAgentDefaults(t *testing.T) {
	embedded, err := os.ReadFile(filepath.Join("..", "agent", "defaults.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var chart, agent configFile
	if err := yaml.UnmarshalStrict(renderedConfig(t), &chart); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(embedded, &agent); err != nil {
		t.Fatalf("agent/defaults.yaml is not in the contract's format: %v", err)
	}
	if chart.Mode != agent.Mode {
		t.Errorf("mode: chart %q, agent %q", chart.Mode, agent.Mode)
	}
	if len(chart.Rules) != len(agent.Rules) {
		t.Fatalf("chart has %d rules, agent/defaults.yaml %d", len(chart.Rules), len(agent.Rules))
	}
	for i := range agent.Rules {
		if !reflect.DeepEqual(chart.Rules[i], agent.Rules[i]) {
			c, _ := json.Marshal(chart.Rules[i])
			a, _ := json.Marshal(agent.Rules[i])
			t.Errorf("rule %d differs from agent/defaults.yaml:\nchart: %s\nagent: %s", i, c, a)
		}
	}
}

// TestValuesSchema checks that values.schema.json (and the template's
// duplicate-name check) turn bad values away, and lets good ones through.
func TestValuesSchema(t *testing.T) {
	rule := func(s string) []string { return []string{"--set-json", "config.rules=[" + s + "]"} }
	const ok = `{"name":"ok","match":{"comm":["x"]},"timeout":"1m"}`
	good := map[string][]string{
		"monitor mode": {"--set", "config.mode=monitor"},
		"full rule": rule(`{"name":"velero-1","match":{"comm":["kopia"],"exe":["/usr/bin/*"],"args":["--x"],"cgroup":["/kubepods/**"]},` +
			`"timeout":"1h30m","max_running":2,"kill":{"signal":"SIGINT","grace":"500ms"},` +
			`"cleanup":{"when":["killed","failed"],"paths":["/tmp/velero-*","**/locks/*"]}}`),
		"no rules":      rule(``),
		"percent":       {"--set", "updateStrategy.maxUnavailable=10%"},
		"no priority":   {"--set", "priorityClassName="},
		"extra tolerat": {"--set-json", `tolerations=[{"key":"a","operator":"Equal","value":"b","effect":"NoSchedule"}]`},
	}
	for name, args := range good {
		if _, err := helmTemplate(t, args...); err != nil {
			t.Errorf("%s: rejected: %v", name, err)
		}
	}
	bad := map[string]struct {
		args []string
		msg  string
	}{
		"mode":             {[]string{"--set", "config.mode=dry-run"}, "/config/mode"},
		"name pattern":     {rule(`{"name":"Restic_1","match":{"comm":["x"]},"timeout":"1m"}`), "/config/rules/0/name"},
		"timeout words":    {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"5 minutes"}`), "/config/rules/0/timeout"},
		"timeout negative": {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"-5m"}`), "/config/rules/0/timeout"},
		"timeout no unit":  {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"300"}`), "/config/rules/0/timeout"},
		"grace":            {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","kill":{"grace":"10"}}`), "/config/rules/0/kill/grace"},
		"no match":         {rule(`{"name":"a","match":{},"timeout":"1m"}`), "/config/rules/0/match"},
		"empty match":      {rule(`{"name":"a","match":{"comm":[],"cgroup":[]},"timeout":"1m"}`), "/config/rules/0/match"},
		"no timeout":       {rule(`{"name":"a","match":{"comm":["x"]}}`), "timeout"},
		"unknown rule key": {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","deadline":"1m"}`), "deadline"},
		"relative path":    {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","cleanup":{"paths":["locks/*"]}}`), "/config/rules/0/cleanup/paths/0"},
		"all paths":        {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","cleanup":{"paths":["/**"]}}`), "/config/rules/0/cleanup/paths/0"},
		"cleanup when":     {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","cleanup":{"when":["crashed"]}}`), "/config/rules/0/cleanup/when/0"},
		"signal":           {rule(`{"name":"a","match":{"comm":["x"]},"timeout":"1m","kill":{"signal":"TERM"}}`), "/config/rules/0/kill/signal"},
		"duplicate names":  {rule(ok + "," + ok), `rule name "ok" is used more than once`},
		"unknown value":    {[]string{"--set", "metric.port=1"}, "metric"},
		"cap prefix":       {[]string{"--set-json", `securityContext.capabilities.add=["CAP_SYS_ADMIN"]`}, "/securityContext/capabilities/add/0"},
		"port":             {[]string{"--set", "metrics.port=70000"}, "/metrics/port"},
		"alert for":        {[]string{"--set", "prometheusRule.alerts.OvertimeAgentDown.for=five"}, "/prometheusRule/alerts/OvertimeAgentDown/for"},
	}
	for name, c := range bad {
		_, err := helmTemplate(t, c.args...)
		if err == nil {
			t.Errorf("%s: %q accepted, want an error mentioning %q", name, c.args, c.msg)
		} else if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error does not mention %q:\n%v", name, c.msg, err)
		}
	}
}

// ---- alerts --------------------------------------------------------------

// renderedRules returns the PrometheusRule rendered with the default values.
func renderedRules(t *testing.T) prometheusRule {
	t.Helper()
	var pr prometheusRule
	strict(t, only(t, render(t, "--set", "prometheusRule.enabled=true"), "PrometheusRule", ""), &pr)
	return pr
}

// writeRulesFile writes groups as a plain Prometheus rules file.
func writeRulesFile(t *testing.T, path string, groups []ruleGroup) {
	t.Helper()
	out, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAlertRules(t *testing.T) {
	pr := renderedRules(t)
	if len(pr.Spec.Groups) != 1 || pr.Spec.Groups[0].Name != "overtime" {
		t.Fatalf("want one rule group named overtime, got %+v", pr.Spec.Groups)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range pr.Spec.Groups[0].Rules {
		names = append(names, r.Alert)
		if r.Labels["severity"] == "" {
			t.Errorf("%s: no severity label", r.Alert)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if r.Annotations[a] == "" {
				t.Errorf("%s: no %s annotation", r.Alert, a)
			}
		}
		if !strings.Contains(r.Annotations["description"], "$labels.node") {
			t.Errorf("%s: description does not name the node", r.Alert)
		}
		if strings.Contains(r.Expr, "rule") && !strings.Contains(r.Annotations["description"], "$labels.rule") {
			t.Errorf("%s: description does not name the rule", r.Alert)
		}
		anchor := "#" + strings.ToLower(r.Alert)
		if !strings.HasSuffix(r.Annotations["runbook_url"], "README.md"+anchor) {
			t.Errorf("%s: runbook_url %q does not point at the README section %s", r.Alert, r.Annotations["runbook_url"], anchor)
		}
		if !regexp.MustCompile(`(?m)^#{2,4} ` + r.Alert + `\s*$`).Match(readme) {
			t.Errorf("%s: README.md has no runbook heading for it", r.Alert)
		}
	}
	if !slices.Equal(names, wantAlerts) {
		t.Errorf("alerts %v, want %v", names, wantAlerts)
	}

	promtool := tool(t, "promtool")
	dir := t.TempDir()
	writeRulesFile(t, filepath.Join(dir, "alerts.rules.yaml"), pr.Spec.Groups)
	mustRun(t, promtool, "check", "rules", filepath.Join(dir, "alerts.rules.yaml"))

	tests, err := os.ReadFile(filepath.Join(chartDir, "tests", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range wantAlerts {
		if !strings.Contains(string(tests), "alertname: "+a) {
			t.Errorf("tests/alerts_test.yaml has no case for %s", a)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, promtool, "test", "rules", filepath.Join(dir, "alerts_test.yaml"))
}

// TestAlertValues checks that the per-alert values reach the rules.
func TestAlertValues(t *testing.T) {
	var pr prometheusRule
	strict(t, only(t, render(t,
		"--set", "prometheusRule.enabled=true",
		"--set", "prometheusRule.alerts.OvertimeProcessLeaked.for=7m",
		"--set", "prometheusRule.alerts.OvertimeZombiesAccumulating.threshold=42",
		"--set", "prometheusRule.alerts.OvertimeKillFailed.window=30m",
		"--set", "prometheusRule.alerts.OvertimeEventsLost.enabled=false",
		"--set", "prometheusRule.alerts.OvertimeAgentDown.absent=false",
		"--set", "prometheusRule.additionalLabels.team=storage",
	), "PrometheusRule", ""), &pr)
	rules := map[string]alertRule{}
	for _, r := range pr.Spec.Groups[0].Rules {
		rules[r.Alert] = r
		if r.Labels["team"] != "storage" {
			t.Errorf("%s: additionalLabels not applied: %v", r.Alert, r.Labels)
		}
	}
	if _, ok := rules["OvertimeEventsLost"]; ok {
		t.Error("OvertimeEventsLost rendered although disabled")
	}
	if rules["OvertimeProcessLeaked"].For != "7m" {
		t.Errorf("OvertimeProcessLeaked for %q, want 7m", rules["OvertimeProcessLeaked"].For)
	}
	if !strings.Contains(rules["OvertimeZombiesAccumulating"].Expr, "> 42") {
		t.Errorf("OvertimeZombiesAccumulating threshold not applied: %s", rules["OvertimeZombiesAccumulating"].Expr)
	}
	if !strings.Contains(rules["OvertimeKillFailed"].Expr, "[30m]") {
		t.Errorf("OvertimeKillFailed window not applied: %s", rules["OvertimeKillFailed"].Expr)
	}
	if strings.Contains(rules["OvertimeAgentDown"].Expr, "absent") {
		t.Errorf("OvertimeAgentDown absent=false still uses absent(): %s", rules["OvertimeAgentDown"].Expr)
	}
}

// ---- dashboard and PromQL --------------------------------------------------

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Panels     []panel        `json:"panels"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Format     string         `json:"format"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "overtime.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboards/overtime.json: %v", err)
	}
	return d
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// variableQuery returns the PromQL inside a query variable's query, which is
// a string or {"query": "..."}; label_values(expr, label) yields expr.
func variableQuery(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		var o struct {
			Query string `json:"query"`
		}
		_ = json.Unmarshal(raw, &o)
		s = o.Query
	}
	if m := regexp.MustCompile(`^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`).FindStringSubmatch(s); m != nil {
		return m[1]
	}
	if strings.HasPrefix(strings.TrimSpace(s), "label_values(") {
		return "" // label_values(label): no expression
	}
	return s
}

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "overtime" {
		t.Errorf("uid %q, want overtime", d.UID)
	}
	if d.SchemaVersion < 38 {
		t.Errorf("schemaVersion %d, want >= 38", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${datasource}") {
			t.Errorf("variable %s: datasource %+v, want ${datasource}", v.Name, v.Datasource)
		}
	}
	if vars["datasource"] != "datasource" {
		t.Error("no datasource variable named datasource")
	}
	for _, v := range []string{"cluster", "node", "rule"} {
		if vars[v] != "query" {
			t.Errorf("no query variable %s", v)
		}
	}
	ids := map[int]bool{}
	types := map[string]int{}
	var exprs []string
	for _, p := range allPanels(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		types[p.Type]++
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: target datasource %+v, want ${datasource}", p.Title, tg.Datasource)
			}
			if p.Type == "heatmap" && (tg.Format != "heatmap" || !strings.Contains(tg.Expr, "_bucket")) {
				t.Errorf("heatmap %q: want format heatmap over a _bucket series, got %q %s", p.Title, tg.Format, tg.Expr)
			}
		}
	}
	if types["heatmap"] < 2 {
		t.Errorf("want heatmaps for runtime and kill latency, got %d", types["heatmap"])
	}
	all := strings.Join(exprs, "\n")
	for _, m := range []string{"overtime_overdue_process_info", "overtime_process_runtime_seconds_bucket", "overtime_kill_latency_seconds_bucket",
		"overtime_kills_total", "overtime_timeouts_total", "overtime_cleanup_skipped_total", "overtime_events_lost_total", "overtime_build_info"} {
		if !strings.Contains(all, m) {
			t.Errorf("no panel queries %s", m)
		}
	}
}

// grafanaVars replaces Grafana's variables with values that keep the PromQL
// parseable: intervals become 5m, everything else a match-all regex.
var grafanaVars = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`), "5m"},
	{regexp.MustCompile(`\$\{?__range_s\}?`), "300"},
	{regexp.MustCompile(`\$\{[a-zA-Z0-9_]+(:[a-z]+)?\}|\$[a-zA-Z_][a-zA-Z0-9_]*`), ".*"},
}

func substituteGrafanaVars(expr string) string {
	for _, v := range grafanaVars {
		expr = v.re.ReplaceAllString(expr, v.with)
	}
	return expr
}

// chartExprs returns every PromQL expression the chart ships: the
// dashboard's targets and variable queries (Grafana variables substituted)
// and the alert rules.
func chartExprs(t *testing.T) []string {
	t.Helper()
	d := loadDashboard(t)
	var exprs []string
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			if q := variableQuery(v.Query); q != "" {
				exprs = append(exprs, substituteGrafanaVars(q))
			}
		}
	}
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			exprs = append(exprs, substituteGrafanaVars(tg.Expr))
		}
	}
	for _, g := range renderedRules(t).Spec.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// TestPromQLParses writes every expression as a recording rule and lets
// promtool parse them (the Prometheus parser is not in the module graph).
func TestPromQLParses(t *testing.T) {
	exprs := chartExprs(t)
	promtool := tool(t, "promtool")
	var rules []alertRule
	for i, e := range exprs {
		if strings.Contains(e, "$") {
			t.Errorf("expression %d still holds a variable after substitution: %s", i, e)
		}
		rules = append(rules, alertRule{Record: fmt.Sprintf("chart:expr_%d", i), Expr: e})
	}
	path := filepath.Join(t.TempDir(), "exprs.rules.yaml")
	writeRulesFile(t, path, []ruleGroup{{Name: "chart-exprs", Rules: rules}})
	if _, err := run(promtool, "check", "rules", path); err != nil {
		// Find the culprits one by one for a readable failure.
		for i, e := range exprs {
			one := filepath.Join(t.TempDir(), "one.rules.yaml")
			writeRulesFile(t, one, []ruleGroup{{Name: "one", Rules: []alertRule{{Record: "chart:expr", Expr: e}}}})
			if _, err := run(promtool, "check", "rules", one); err != nil {
				t.Errorf("expression %d does not parse: %s\n%v", i, e, err)
			}
		}
		t.Fatal(err)
	}
}

// ---- metric names ------------------------------------------------------------

var (
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promOffset   = regexp.MustCompile(`\b(offset\s+-?|@\s*)[0-9a-z.()]+`)
	promIdent    = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:.])([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	promKeywords = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"offset": true, "bool": true, "and": true, "or": true, "unless": true, "atan2": true,
		"inf": true, "nan": true, "start": true, "end": true,
	}
	histogramSuffix = regexp.MustCompile(`_(bucket|sum|count)$`)
)

// metricNamesIn returns the metric names an expression selects: identifiers
// outside strings, label matchers, grouping clauses, ranges and offsets,
// not followed by "(" (functions, aggregations) and not keywords, with the
// histogram series suffixes stripped.
func metricNamesIn(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promOffset.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promIdent.FindAllStringSubmatchIndex(e, -1) {
		name := e[m[2]:m[3]]
		if promKeywords[strings.ToLower(name)] {
			continue
		}
		if rest := strings.TrimLeft(e[m[3]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue
		}
		names = append(names, histogramSuffix.ReplaceAllString(name, ""))
	}
	return names
}

// chartMetricNames returns, sorted and without duplicates, every metric
// name the chart's dashboard and alert rules use (histograms by base name).
func chartMetricNames(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, e := range chartExprs(t) {
		for _, n := range metricNamesIn(e) {
			seen[n] = true
		}
	}
	return slices.Sorted(func(yield func(string) bool) {
		for n := range seen {
			if !yield(n) {
				return
			}
		}
	})
}

// synthetic are series Prometheus makes itself, not the agent.
var synthetic = map[string]bool{"up": true}

func TestMetricNamesIn(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (node, rule) (rate(overtime_events_total{type="exec", node=~".*"}[5m]))`:                    {"overtime_events_total"},
		`histogram_quantile(0.95, sum by (le) (rate(overtime_kill_latency_seconds_bucket[5m])))`:            {"overtime_kill_latency_seconds"},
		`x_total > 0 unless x_total offset 10m or absent(up{job=~"a"}) and on(pod) group_left(node) info_a`: {"x_total", "x_total", "up", "info_a"},
		`max(a) by (pod) * 1e3 + count(b_count) - sum without (c) (c_sum)`:                                  {"a", "b", "c"},
		`label_values_unused_name + ignoring (le) inf_metric`:                                               {"label_values_unused_name", "inf_metric"},
	} {
		if got := metricNamesIn(expr); !slices.Equal(got, want) {
			t.Errorf("metricNamesIn(%s) = %v, want %v", expr, got, want)
		}
	}
}

// TestChartMetricsExist checks that every metric the chart uses is one the
// agent registers. registryMetricNames is wired to the agent by the lead.
func TestChartMetricsExist(t *testing.T) {
	names := chartMetricNames(t)
	registry := registryMetricNames()
	if registry == nil {
		t.Fatalf("registryMetricNames is not wired to the agent's registry yet; the chart uses %v", names)
	}
	for _, n := range names {
		if !synthetic[n] && !slices.Contains(registry, n) {
			t.Errorf("the chart uses %s, which the agent does not register", n)
		}
	}
}

// contractMetricNames reads the Metrics table of the public contract, the
// repository's CONTRACT.md.
func contractMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "CONTRACT.md"))
	if err != nil {
		t.Fatal(err)
	}
	contract := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(overtime_[a-z0-9_]+)` \\|").FindAllStringSubmatch(string(raw), -1) {
		contract[m[1]] = true
	}
	if len(contract) == 0 {
		t.Fatal("no metrics found in CONTRACT.md's Metrics table")
	}
	return contract
}

// TestContractMetricsRegistered checks that every metric of the contract is
// one the agent registers.
func TestContractMetricsRegistered(t *testing.T) {
	registry := registryMetricNames()
	for _, n := range slices.Sorted(maps.Keys(contractMetricNames(t))) {
		if !slices.Contains(registry, n) {
			t.Errorf("CONTRACT.md names %s, which the agent does not register", n)
		}
	}
}

// TestChartMetricsInContract checks the chart's metric names against the
// Metrics table of the public contract.
func TestChartMetricsInContract(t *testing.T) {
	contract := contractMetricNames(t)
	for _, n := range chartMetricNames(t) {
		if !synthetic[n] && !contract[n] {
			t.Errorf("the chart uses %s, which CONTRACT.md's Metrics table does not list", n)
		}
	}
}
