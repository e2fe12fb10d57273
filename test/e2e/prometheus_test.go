package e2e

// The agent's /metrics as Prometheus itself sees it: promtool lints the real
// exposition, and a real Prometheus on loopback scrapes a real agent and
// evaluates the chart's own alert rules against it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// monitorRule is a config with one monitor-mode rule matching comm name.
func monitorRule(name, timeout, grace string) string {
	return fmt.Sprintf(`
mode: monitor
rules:
  - name: %s
    match: {comm: [%s]}
    timeout: %s
    kill: {signal: SIGTERM, grace: %s}
`, name, name, timeout, grace)
}

// TestPromtoolCheckMetrics lints the agent's real /metrics with
// `promtool check metrics` once every kind of series is populated: table
// gauges, the overdue info series, counters with each kill result the
// monitor mode reaches, and the runtime histogram for exited and failed
// trees.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := tool(t, "promtool")
	const name = "ovt-promlint"
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, monitorRule(name, "1s", "1s"))
	eng := engine(t, dir, name, `case "$1" in
ok) exit 0 ;;
fail) exit 3 ;;
esac
sleep 1000 &
wait`)
	long := cg.start(t, dir, eng)
	okRun := cg.start(t, dir, eng+" ok")
	failRun := cg.start(t, dir, eng+" fail")
	for _, p := range []*proc{okRun, failRun} {
		if !p.waitDone(5 * time.Second) {
			t.Fatal("a short run did not end")
		}
	}
	eventually(t, 10*time.Second, "the long run overdue past its grace (monitor mode)", func() bool {
		return a.metric(`overtime_kills_total{result="skipped_monitor",rule="`+name+`",signal="SIGKILL"}`) == 1 &&
			a.metric(`overtime_process_runtime_seconds_count{outcome="exited",rule="`+name+`"}`) == 1 &&
			a.metric(`overtime_process_runtime_seconds_count{outcome="failed",rule="`+name+`"}`) == 1
	})
	if !long.alive() {
		t.Fatal("monitor mode ended the overdue process")
	}
	text := a.metricsText()
	for _, want := range []string{
		fmt.Sprintf(`overtime_overdue_process_info{comm="%s",container_id="",pid="%d",pod_uid="",rule="%s"} 1`, name, long.pid, name),
		`overtime_overdue_processes{rule="` + name + `"} 2`,
		`overtime_timeouts_total{rule="` + name + `"} 1`,
		`overtime_kills_total{result="skipped_monitor",rule="` + name + `",signal="SIGTERM"} 1`,
		"overtime_build_info{",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s\n/metrics was:\n%s", err, out, text)
	}
}

// ---- Prometheus on loopback -------------------------------------------------

// chartDir is the Helm chart, relative to this package.
const chartDir = "../../charts/overtime"

// The release the chart is rendered as, and the target labels a
// prometheus-operator scrape of its ServiceMonitor gives the agent pod.
const (
	releaseName      = "overtime"
	releaseNamespace = "overtime-system"
	agentPodName     = "overtime-e2e"
)

// helmRender renders templates of the chart (helm template --show-only) and
// returns the documents by kind. Helm's config, cache and data dirs are
// private to the test.
func helmRender(t *testing.T, templates []string, args ...string) map[string][]byte {
	t.Helper()
	helm := tool(t, "helm")
	home := t.TempDir()
	full := []string{"template", releaseName, chartDir, "--namespace", releaseNamespace}
	for _, tpl := range templates {
		full = append(full, "--show-only", tpl)
	}
	cmd := exec.Command(helm, append(full, args...)...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, stderr.String())
	}
	docs := map[string][]byte{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(stdout.String(), -1) {
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("helm output is not YAML: %v\n%s", err, doc)
		}
		if head.Kind != "" {
			docs[head.Kind] = []byte(doc)
		}
	}
	return docs
}

// promRules renders the chart's PrometheusRule and returns its spec.groups
// as written (for a rules file) and decoded (to check the alert).
func promRules(t *testing.T, doc []byte) (groups []any, rules map[string]map[string]any) {
	t.Helper()
	var pr struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &pr); err != nil {
		t.Fatal(err)
	}
	rules = map[string]map[string]any{}
	for _, g := range pr.Spec.Groups {
		groups = append(groups, g)
		rs, _ := g["rules"].([]any)
		for _, r := range rs {
			if m, ok := r.(map[string]any); ok {
				if name, _ := m["alert"].(string); name != "" {
					rules[name] = m
				}
			}
		}
	}
	return groups, rules
}

// scrapeConfig builds the Prometheus scrape job a prometheus-operator makes
// from the chart's ServiceMonitor, for one agent pod at addr on node: the
// operator's own relabelings (job, namespace, service, pod, container,
// endpoint from the Kubernetes meta labels), then the ServiceMonitor's
// relabelings and metricRelabelings as the chart renders them. The meta
// labels a Kubernetes SD would give are static target labels here.
func scrapeConfig(t *testing.T, doc []byte, addr, node string) map[string]any {
	t.Helper()
	var sm struct {
		Spec struct {
			Endpoints []struct {
				Port              string           `json:"port"`
				Path              string           `json:"path"`
				Interval          string           `json:"interval"`
				ScrapeTimeout     string           `json:"scrapeTimeout"`
				Relabelings       []map[string]any `json:"relabelings"`
				MetricRelabelings []map[string]any `json:"metricRelabelings"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &sm); err != nil {
		t.Fatal(err)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor: want one endpoint, got %d", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	// prometheus-operator's CamelCase relabel fields → Prometheus's.
	convert := func(in []map[string]any) []any {
		keys := map[string]string{"sourceLabels": "source_labels", "targetLabel": "target_label"}
		var out []any
		for _, r := range in {
			m := map[string]any{}
			for k, v := range r {
				if nk, ok := keys[k]; ok {
					k = nk
				}
				m[k] = v
			}
			out = append(out, m)
		}
		return out
	}
	replace := func(src, dst string) map[string]any {
		return map[string]any{"action": "replace", "source_labels": []string{src}, "target_label": dst}
	}
	relabel := []any{
		replace("__meta_kubernetes_service_name", "job"),
		replace("__meta_kubernetes_namespace", "namespace"),
		replace("__meta_kubernetes_service_name", "service"),
		replace("__meta_kubernetes_pod_name", "pod"),
		replace("__meta_kubernetes_pod_container_name", "container"),
		map[string]any{"action": "replace", "target_label": "endpoint", "replacement": ep.Port},
	}
	relabel = append(relabel, convert(ep.Relabelings)...)
	job := map[string]any{
		"job_name":        "serviceMonitor/" + releaseNamespace + "/" + releaseName + "/0",
		"metrics_path":    ep.Path,
		"scrape_interval": ep.Interval,
		"scrape_timeout":  ep.ScrapeTimeout,
		"static_configs": []any{map[string]any{
			"targets": []string{addr},
			"labels": map[string]string{
				"__meta_kubernetes_namespace":          releaseNamespace,
				"__meta_kubernetes_service_name":       releaseName,
				"__meta_kubernetes_pod_name":           agentPodName,
				"__meta_kubernetes_pod_container_name": "agent",
				"__meta_kubernetes_pod_node_name":      node,
			},
		}},
		"relabel_configs": relabel,
	}
	if mr := convert(ep.MetricRelabelings); len(mr) > 0 {
		job["metric_relabel_configs"] = mr
	}
	return job
}

// prometheusProc is a Prometheus server the test started on loopback.
type prometheusProc struct {
	t    *testing.T
	url  string
	logs *syncBuffer
}

// startPrometheus runs prometheus with the config file (its storage in a
// temporary directory) on a free loopback port, for at most limit, and
// waits until it is ready. Cleanup stops it (SIGTERM, then SIGKILL).
func startPrometheus(t *testing.T, configPath string, limit time.Duration) *prometheusProc {
	t.Helper()
	bin := tool(t, "prometheus")
	storage := t.TempDir()
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+configPath,
		"--storage.tsdb.path="+storage,
		"--web.listen-address="+addr,
		"--log.level=debug",
	)
	cmd.WaitDelay = 5 * time.Second
	p := &prometheusProc{t: t, url: "http://" + addr, logs: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
		cancel()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("prometheus exited before ready:\n%s", p.logs.String())
		default:
		}
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("prometheus not ready in 30s:\n%s", p.logs.String())
	return nil
}

// api GETs a Prometheus HTTP API path and decodes its data field into v.
func (p *prometheusProc) api(path string, v any) error {
	resp, err := http.Get(p.url + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: status %q: %s", path, body.Status, body.Error)
	}
	return json.Unmarshal(body.Data, v)
}

type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

// alerts returns the active (pending or firing) alerts named name.
func (p *prometheusProc) alerts(name string) []promAlert {
	p.t.Helper()
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := p.api("/api/v1/alerts", &data); err != nil {
		p.t.Fatal(err)
	}
	var out []promAlert
	for _, a := range data.Alerts {
		if a.Labels["alertname"] == name {
			out = append(out, a)
		}
	}
	return out
}

// query runs an instant PromQL query and returns the result's series.
func (p *prometheusProc) query(q string) []map[string]any {
	p.t.Helper()
	var data struct {
		Result []map[string]any `json:"result"`
	}
	if err := p.api("/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		p.t.Fatal(err)
	}
	return data.Result
}

// TestAlertLeakedFiresInPrometheus runs the chart's alerts in a real
// Prometheus against a real agent: a monitor-mode rule's process is never
// ended, so OvertimeProcessLeaked fires for it (not before deadline +
// grace), names its rule, pid and node, and resolves once the process is
// gone.
func TestAlertLeakedFiresInPrometheus(t *testing.T) {
	promtool := tool(t, "promtool")
	tool(t, "prometheus")
	const (
		name    = "ovt-leak"
		timeout = 2 * time.Second
		grace   = 1 * time.Second
		// The alert's `for`: longer than the grace plus a scrape interval
		// or two, as values.yaml asks.
		leakFor = "3s"
	)
	node, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	cg := newTestCgroup(t)
	dir := t.TempDir()
	a := startAgent(t, monitorRule(name, timeout.String(), grace.String()))

	docs := helmRender(t, []string{"templates/prometheusrule.yaml", "templates/servicemonitor.yaml"},
		"--set", "prometheusRule.enabled=true",
		"--set", "prometheusRule.alerts.OvertimeProcessLeaked.for="+leakFor,
		"--set", "serviceMonitor.enabled=true",
		"--set", "serviceMonitor.interval=1s",
		"--set", "serviceMonitor.scrapeTimeout=1s",
	)
	if docs["PrometheusRule"] == nil || docs["ServiceMonitor"] == nil {
		t.Fatalf("helm rendered %d documents, want a PrometheusRule and a ServiceMonitor", len(docs))
	}
	groups, rules := promRules(t, docs["PrometheusRule"])
	leak, ok := rules["OvertimeProcessLeaked"]
	if !ok {
		t.Fatal("the PrometheusRule has no OvertimeProcessLeaked")
	}
	if leak["for"] != leakFor {
		t.Fatalf("OvertimeProcessLeaked for = %v, want %s from the values", leak["for"], leakFor)
	}
	rulesPath := filepath.Join(dir, "overtime.rules.yaml")
	writeYAML(t, rulesPath, map[string]any{"groups": groups})
	cfgPath := filepath.Join(dir, "prometheus.yml")
	writeYAML(t, cfgPath, map[string]any{
		"global": map[string]any{
			"scrape_interval":     "1s",
			"scrape_timeout":      "1s",
			"evaluation_interval": "1s",
		},
		"rule_files":     []string{rulesPath},
		"scrape_configs": []any{scrapeConfig(t, docs["ServiceMonitor"], a.addr, node)},
	})
	if out, err := exec.Command(promtool, "check", "config", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}

	prom := startPrometheus(t, cfgPath, 3*time.Minute)
	// The agent is scraped, with the labels the ServiceMonitor gives it, and
	// the chart's rules are loaded.
	eventually(t, 20*time.Second, "the agent scraped with its node label", func() bool {
		return len(prom.query(fmt.Sprintf(`up{job=~".*overtime.*", node=%q, namespace=%q, pod=%q} == 1`, node, releaseNamespace, agentPodName))) == 1 &&
			len(prom.query(`overtime_build_info`)) == 1
	})
	var ruleData struct {
		Groups []struct {
			Rules []struct {
				Name   string `json:"name"`
				Health string `json:"health"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := prom.api("/api/v1/rules", &ruleData); err != nil {
		t.Fatal(err)
	}
	loaded := map[string]string{}
	for _, g := range ruleData.Groups {
		for _, r := range g.Rules {
			loaded[r.Name] = r.Health
		}
	}
	if len(loaded) != len(rules) || loaded["OvertimeProcessLeaked"] == "" {
		t.Fatalf("prometheus loaded rules %v, want the chart's %d", loaded, len(rules))
	}
	if got := prom.alerts("OvertimeProcessLeaked"); len(got) != 0 {
		t.Fatalf("OvertimeProcessLeaked active before any process: %+v", got)
	}

	eng := engine(t, dir, name, "sleep 1000 &\nwait")
	started := time.Now()
	p := cg.start(t, dir, eng)
	pid := strconv.Itoa(p.pid)
	eventually(t, 15*time.Second, "the engine tracked", func() bool {
		_, ok := a.process(p.pid)
		return ok
	})

	var firing promAlert
	var sawPending bool
	eventually(t, 60*time.Second, "OvertimeProcessLeaked firing for the engine", func() bool {
		for _, al := range prom.alerts("OvertimeProcessLeaked") {
			if al.Labels["rule"] != name || al.Labels["pid"] != pid {
				continue
			}
			switch al.State {
			case "pending":
				sawPending = true
			case "firing":
				firing = al
				return true
			}
		}
		return false
	})
	elapsed := time.Since(started)
	if elapsed < timeout+grace {
		t.Errorf("fired %v after the engine started, before its deadline + grace (%v)", elapsed, timeout+grace)
	}
	t.Logf("OvertimeProcessLeaked firing %v after start (pending seen: %v): %v", elapsed.Round(100*time.Millisecond), sawPending, firing.Labels)
	want := map[string]string{
		"alertname": "OvertimeProcessLeaked",
		"severity":  "critical",
		"rule":      name,
		"pid":       pid,
		"comm":      name,
		"node":      node,
		"namespace": releaseNamespace,
		"pod":       agentPodName,
		"instance":  a.addr,
	}
	for k, v := range want {
		if firing.Labels[k] != v {
			t.Errorf("alert label %s = %q, want %q (labels %v)", k, firing.Labels[k], v, firing.Labels)
		}
	}
	if s := firing.Annotations["summary"]; s != fmt.Sprintf("Overdue %s process %s is still alive on %s", name, pid, node) {
		t.Errorf("summary %q", s)
	}
	if d := firing.Annotations["description"]; !strings.Contains(d, "node "+node) || !strings.Contains(d, releaseNamespace+"/"+agentPodName) {
		t.Errorf("description %q does not name the node and the agent pod", d)
	}

	// Monitor mode never kills: the engine and its child live on.
	if !p.alive() {
		t.Fatal("the engine died in monitor mode")
	}
	kids := childPids(p.pid)
	if len(kids) != 1 || !pidAlive(kids[0]) {
		t.Fatalf("the engine's child is not alive: children %v", kids)
	}
	if info, _ := a.process(p.pid); info.State != "overdue" {
		t.Errorf("agent state of the engine = %q, want overdue", info.State)
	}
	if v := a.metric(`overtime_kills_total{result="skipped_monitor",rule="` + name + `",signal="SIGKILL"}`); v != 1 {
		t.Errorf("kills_total{SIGKILL,skipped_monitor} = %v, want 1", v)
	}
	if v := a.metric(`overtime_kills_total{result="ok",rule="` + name + `",signal="SIGKILL"}`); v > 0 {
		t.Errorf("kills_total{SIGKILL,ok} = %v in monitor mode", v)
	}

	// End the process ourselves: the alert resolves.
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !p.waitDone(5 * time.Second) {
		t.Fatal("the engine did not die of SIGKILL")
	}
	killed := time.Now()
	eventually(t, 30*time.Second, "OvertimeProcessLeaked resolved for the engine", func() bool {
		for _, al := range prom.alerts("OvertimeProcessLeaked") {
			if al.Labels["rule"] == name {
				return false
			}
		}
		return true
	})
	t.Logf("OvertimeProcessLeaked resolved %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	if n := len(prom.query(fmt.Sprintf(`overtime_overdue_process_info{rule=%q}`, name))); n != 0 {
		t.Errorf("%d overdue_process_info series left in Prometheus after the process died", n)
	}
	// And no other alert of the chart stands against a healthy agent whose
	// only overdue process is gone (OvertimeAgentDown's absent() may pend
	// before the first scrape, never after).
	var all struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := prom.api("/api/v1/alerts", &all); err != nil {
		t.Fatal(err)
	}
	for _, al := range all.Alerts {
		t.Errorf("alert %s %s against a healthy agent: %v", al.Labels["alertname"], al.State, al.Labels)
	}
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	out, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
