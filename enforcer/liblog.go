package enforcer

import (
	"context"
	"io"
	"log/slog"
	"strings"

	"github.com/sirupsen/logrus"
)

// routeLibraryLogs sends what containerd/cgroups logs (through logrus's
// standard logger, in its own format) to the agent's logger, one event a
// line like every other, tagged component=cgroups. The library's fallback
// from cgroup.kill to freeze-and-kill is what a kill sweep racing a cgroup
// that is already gone looks like: expected, so it is debug, not a warning.
func routeLibraryLogs(log *slog.Logger) {
	std := logrus.StandardLogger()
	std.SetOutput(io.Discard)
	std.SetLevel(logrus.DebugLevel) // the agent's handler filters
	std.ReplaceHooks(logrus.LevelHooks{})
	std.AddHook(slogHook{log.With("component", "cgroups")})
}

type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(e.Message, "falling back to slower kill implementation"):
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level == logrus.WarnLevel:
		level = slog.LevelWarn
	case e.Level == logrus.InfoLevel:
		level = slog.LevelInfo
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}
