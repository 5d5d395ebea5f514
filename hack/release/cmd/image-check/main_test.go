package main

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/hack/release/internal/dockerfile"
)

func TestEntrypoint(t *testing.T) {
	for _, tc := range []struct {
		name, final, want, err string
	}{
		{"ENTRYPOINT wins over the last COPY", "COPY --from=build /out/a /out/b /usr/local/bin/\nENTRYPOINT [\"/usr/local/bin/a\"]", "/usr/local/bin/a", ""},
		{"without ENTRYPOINT, the last COPY from a stage", "COPY --from=build /out/manager /manager", "/manager", ""},
		{"a COPY from the context is not the binary", "COPY LICENSE /LICENSE", "", ""},
		{"shell-form ENTRYPOINT is refused", "COPY --from=build /out/a /a\nENTRYPOINT /a serve", "", "exec form"},
		{"empty ENTRYPOINT is refused", "ENTRYPOINT []", "", "exec form"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			df, err := dockerfile.Parse(strings.NewReader("FROM golang:1.26 AS build\nRUN true\nFROM scratch\n" + tc.final + "\n"))
			g.Expect(err).NotTo(HaveOccurred())
			got, err := entrypoint(&df.Stages[len(df.Stages)-1])
			if tc.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}
