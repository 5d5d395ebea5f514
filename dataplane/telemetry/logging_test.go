package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestSetLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "error", want: "error"},
		{in: "warn", want: "warn"},
		{in: "info", want: "info"},
		{in: "debug", want: "debug"},
		{in: " DEBUG ", want: "debug"},
		{in: "Warn", want: "warn"},
		{in: "", wantErr: true},
		{in: "trace", wantErr: true},
		{in: "warning", wantErr: true},
		{in: "1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			g := NewWithT(t)
			l, err := NewLogging(&bytes.Buffer{}, "info")
			g.Expect(err).NotTo(HaveOccurred())
			err = l.SetLevel(tt.in)
			if tt.wantErr {
				g.Expect(err).To(MatchError(ContainSubstring("want one of error, warn, info, debug")))
				g.Expect(err.Error()).To(ContainSubstring("%q", tt.in))
				g.Expect(l.Level()).To(Equal("info"), "a bad level leaves the level as it was")
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(l.Level()).To(Equal(tt.want))
		})
	}
}

func TestNewLoggingRejectsUnknownLevel(t *testing.T) {
	g := NewWithT(t)
	_, err := NewLogging(&bytes.Buffer{}, "verbose")
	g.Expect(err).To(MatchError(ContainSubstring(`unknown log level "verbose"`)))
}

// TestLoggingLevels checks which logr calls each level lets through, and that lines are JSON with a
// plain level name.
func TestLoggingLevels(t *testing.T) {
	tests := []struct {
		level string
		want  []string // messages written
	}{
		{level: "error", want: []string{"error"}},
		{level: "warn", want: []string{"error"}},
		{level: "info", want: []string{"info", "error"}},
		{level: "debug", want: []string{"info", "v1", "v4", "error"}},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			g := NewWithT(t)
			var buf bytes.Buffer
			l, err := NewLogging(&buf, tt.level)
			g.Expect(err).NotTo(HaveOccurred())
			log := l.Logger()
			log.Info("info", "someKey", 1)
			log.V(1).Info("v1")
			log.V(4).Info("v4")
			log.V(5).Info("v5")
			log.Error(errors.New("boom"), "error")

			var got []string
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if line == "" {
					continue
				}
				var m map[string]any
				g.Expect(json.Unmarshal([]byte(line), &m)).To(Succeed(), line)
				got = append(got, m["msg"].(string))
				want := map[string]string{"info": "INFO", "v1": "DEBUG", "v4": "DEBUG", "error": "ERROR"}[m["msg"].(string)]
				g.Expect(m).To(HaveKeyWithValue("level", want))
				g.Expect(m).To(HaveKey("time"))
				if m["msg"] == "error" {
					g.Expect(m).To(HaveKeyWithValue("err", "boom"))
				}
			}
			g.Expect(got).To(Equal(tt.want))
		})
	}
}

func TestSetLevelAppliesToExistingLoggers(t *testing.T) {
	g := NewWithT(t)
	var buf bytes.Buffer
	l, err := NewLogging(&buf, "info")
	g.Expect(err).NotTo(HaveOccurred())
	log := l.Logger().WithName("proxy").WithValues("node", "n1")
	log.V(1).Info("hidden")
	g.Expect(buf.String()).To(BeEmpty())
	g.Expect(l.SetLevel("debug")).To(Succeed())
	log.V(1).Info("shown")
	g.Expect(buf.String()).To(ContainSubstring(`"msg":"shown"`))
	g.Expect(buf.String()).To(ContainSubstring(`"logger":"proxy"`))
	g.Expect(buf.String()).To(ContainSubstring(`"node":"n1"`))
}
