package telemetry

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/go-logr/logr"
)

// The log levels that [Logging.SetLevel] accepts, from the quietest to the most verbose.
const (
	LevelError = "error"
	LevelWarn  = "warn"
	LevelInfo  = "info"
	LevelDebug = "debug"
)

// levels maps each level name to its slog level. logr's V(n) logs at slog level -n, so "debug"
// (slog.LevelDebug = -4) enables V(1) through V(4); "info" enables V(0) only. logr's Error is always
// slog's ERROR; logr has no warning, so "warn" and "error" differ only for slog callers.
var levels = []struct {
	name  string
	level slog.Level
}{
	{LevelError, slog.LevelError},
	{LevelWarn, slog.LevelWarn},
	{LevelInfo, slog.LevelInfo},
	{LevelDebug, slog.LevelDebug},
}

// validLevels is the list of level names for error messages.
const validLevels = LevelError + ", " + LevelWarn + ", " + LevelInfo + ", " + LevelDebug

// Logging is the process's logger: JSON lines (log/slog's JSON handler) on one writer, with a level that
// can change while the process runs (the admin endpoint /logging does so). It is safe for concurrent use.
type Logging struct {
	level  slog.LevelVar
	logger logr.Logger
}

// NewLogging returns logging that writes JSON lines to w at the given level (one of "error", "warn",
// "info", "debug").
func NewLogging(w io.Writer, level string) (*Logging, error) {
	l := &Logging{}
	if err := l.SetLevel(level); err != nil {
		return nil, err
	}
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: &l.level, ReplaceAttr: levelName})
	l.logger = logr.FromSlogHandler(h)
	return l, nil
}

// Logger returns the logger. Use V(0) (Info) for what an operator of the mesh acts on, V(1) for debugging,
// and Error for failures.
func (l *Logging) Logger() logr.Logger { return l.logger }

// Level returns the name of the current level.
func (l *Logging) Level() string {
	cur := l.level.Level()
	for _, lv := range levels {
		if cur >= lv.level {
			return lv.name
		}
	}
	return LevelDebug
}

// SetLevel changes the level; name is one of "error", "warn", "info", "debug" (case does not matter).
func (l *Logging) SetLevel(name string) error {
	lv, err := ParseLevel(name)
	if err != nil {
		return err
	}
	l.level.Set(lv)
	return nil
}

// ParseLevel returns the slog level of a level name: "error", "warn", "info" or "debug".
func ParseLevel(name string) (slog.Level, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	for _, lv := range levels {
		if n == lv.name {
			return lv.level, nil
		}
	}
	return 0, fmt.Errorf("unknown log level %q: want one of %s", name, validLevels)
}

// levelName writes the level as one of the four names (in upper case, as slog does) instead of slog's
// "DEBUG+3" for logr's V(1).
func levelName(groups []string, a slog.Attr) slog.Attr {
	if a.Key != slog.LevelKey || len(groups) != 0 {
		return a
	}
	lv, ok := a.Value.Any().(slog.Level)
	if !ok {
		return a
	}
	switch {
	case lv >= slog.LevelError:
		a.Value = slog.StringValue("ERROR")
	case lv >= slog.LevelWarn:
		a.Value = slog.StringValue("WARN")
	case lv >= slog.LevelInfo:
		a.Value = slog.StringValue("INFO")
	default:
		a.Value = slog.StringValue("DEBUG")
	}
	return a
}
