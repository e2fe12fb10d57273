// Package charttest renders the Helm chart with the real helm binary and
// decodes what it renders into k8s.io/api types, for the chart's own tests
// (charts/) and for the tests that run what the chart deploys
// (test/container).
package charttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"overtime/internal/testtool"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The release the tests render.
const (
	ReleaseName      = "overtime"
	ReleaseNamespace = "overtime-system"
)

// Manifest is one document of `helm template` output.
type Manifest struct {
	Kind, Name, Source string
	Doc                []byte
}

// Helm finds the helm binary (see testtool.Find).
func Helm(t testing.TB) string { return testtool.Find(t, "helm") }

// Run runs a command and returns its stdout; stderr goes into the error.
// helm is kept away from the user's repositories and caches.
func Run(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	home := os.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "overtime-chart-test", "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "overtime-chart-test", "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "overtime-chart-test", "data"),
	)
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout:\n%s\nstderr:\n%s",
			filepath.Base(bin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

var (
	sourceLine = regexp.MustCompile(`(?m)^# Source: (\S+)`)
	docSep     = regexp.MustCompile(`(?m)^---\s*$`)
)

// Template runs `helm template` on chartDir with extra helm arguments.
func Template(t testing.TB, chartDir string, args ...string) (string, error) {
	t.Helper()
	base := []string{"template", ReleaseName, chartDir, "--namespace", ReleaseNamespace}
	return Run(Helm(t), append(base, args...)...)
}

// Render renders chartDir and splits it into its manifests.
func Render(t testing.TB, chartDir string, args ...string) []Manifest {
	t.Helper()
	out, err := Template(t, chartDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	var ms []Manifest
	for _, doc := range docSep.Split(out, -1) {
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if head.Kind == "" {
			if strings.TrimSpace(stripComments(doc)) != "" {
				t.Fatalf("rendered document has no kind:\n%s", doc)
			}
			continue
		}
		m := Manifest{Kind: head.Kind, Name: head.Metadata.Name, Doc: []byte(doc)}
		if s := sourceLine.FindStringSubmatch(doc); s != nil {
			m.Source = s[1]
		}
		ms = append(ms, m)
	}
	return ms
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Strict decodes a manifest into out, failing on unknown or duplicate fields.
func Strict(t testing.TB, m Manifest, out any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(m.Doc, out); err != nil {
		t.Fatalf("%s %s (%s) does not decode strictly into %T: %v", m.Kind, m.Name, m.Source, out, err)
	}
}

// Only returns the single manifest of kind (and name, if not empty).
func Only(t testing.TB, ms []Manifest, kind, name string) Manifest {
	t.Helper()
	var found []Manifest
	for _, m := range ms {
		if m.Kind == kind && (name == "" || m.Name == name) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %q in the rendered chart, found %d", kind, name, len(found))
	}
	return found[0]
}

// DaemonSet decodes the one DaemonSet of ms.
func DaemonSet(t testing.TB, ms []Manifest) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	Strict(t, Only(t, ms, "DaemonSet", ""), &ds)
	return &ds
}

// ConfigMap decodes the ConfigMap of ms named name.
func ConfigMap(t testing.TB, ms []Manifest, name string) *corev1.ConfigMap {
	t.Helper()
	var cm corev1.ConfigMap
	Strict(t, Only(t, ms, "ConfigMap", name), &cm)
	return &cm
}

// AgentContainer returns the DaemonSet's one container.
func AgentContainer(t testing.TB, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("want one container in the DaemonSet, got %d", len(cs))
	}
	return cs[0]
}
