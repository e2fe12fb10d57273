package enforcer

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	clog "github.com/containerd/log"
)

// What containerd/cgroups logs reaches the agent's logger in its format:
// the kill fallback at debug, an error at error, with the fields.
func TestLibraryLogsRouted(t *testing.T) {
	var buf bytes.Buffer
	routeLibraryLogs(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	clog.L.Warnf("falling back to slower kill implementation: %s", "open /x/cgroup.kill: no such file or directory")
	clog.L.WithField("path", "/x").Error("Unable to get systemd version")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{
		`level=DEBUG msg="falling back to slower kill implementation: open /x/cgroup.kill: no such file or directory" component=cgroups`,
		`level=ERROR msg="Unable to get systemd version" component=cgroups path=/x`,
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %s, want it to contain %s", i, lines[i], want)
		}
	}
	if strings.Contains(buf.String(), "time=\"") && strings.Contains(buf.String(), "level=warning") {
		t.Errorf("logrus's own format leaked:\n%s", buf.String())
	}
}
