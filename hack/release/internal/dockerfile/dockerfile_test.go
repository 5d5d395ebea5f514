package dockerfile

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestParse(t *testing.T) {
	g := NewWithT(t)
	d, err := Parse(strings.NewReader(`# syntax comment
ARG BASE=golang:1.26
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG VERSION=dev
ARG TARGETOS
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache CGO_ENABLED=0 GOOS=${TARGETOS} \
    # a comment between continuation lines
    go build -ldflags "-X main.version=${VERSION}" -o /out/manager .

FROM scratch
COPY --from=build /out/manager /manager
USER 65532:65532
`))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d.GlobalArgs).To(HaveLen(1))
	g.Expect(d.Stages).To(HaveLen(2))
	build := d.Stage("build")
	g.Expect(build).NotTo(BeNil())
	g.Expect(build.Base).To(Equal("golang:1.26"))
	g.Expect(build.Args(map[string]string{"TARGETOS": "linux"})).To(Equal(map[string]string{"VERSION": "dev", "TARGETOS": "linux"}))
	run := build.Instr[4]
	g.Expect(run.Cmd).To(Equal("RUN"))
	g.Expect(run.Flags).To(HaveKeyWithValue("mount", "type=cache,target=/root/.cache"))
	g.Expect(run.Args[0]).To(Equal(`CGO_ENABLED=0 GOOS=${TARGETOS}  go build -ldflags "-X main.version=${VERSION}" -o /out/manager .`))
	g.Expect(run.Line).To(Equal(8))
	copyFrom := d.Stages[1].Instr[0]
	g.Expect(copyFrom.Flags).To(HaveKeyWithValue("from", "build"))
	g.Expect(copyFrom.Args).To(Equal([]string{"/out/manager", "/manager"}))

	_, err = Parse(strings.NewReader("FROM scratch\nCOPY [\"a\", \"b\"]\n"))
	g.Expect(err).To(MatchError(ContainSubstring("JSON form")))
}

func TestWords(t *testing.T) {
	for _, tc := range []struct {
		in    string
		words []string
		err   string
	}{
		{in: `go build -ldflags "-s -w -X main.version=1.0" -o /out/m .`, words: []string{"go", "build", "-ldflags", "-s -w -X main.version=1.0", "-o", "/out/m", "."}},
		{in: `A=1 'b c' d\ e "x\"y"`, words: []string{"A=1", "b c", "d e", `x"y`}},
		{in: `go mod download && go build .`, err: "single simple command"},
		{in: `echo "open`, err: "unterminated quote"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			g := NewWithT(t)
			w, err := Words(tc.in)
			if tc.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(w).To(Equal(tc.words))
		})
	}
}

func TestExpand(t *testing.T) {
	g := NewWithT(t)
	g.Expect(Expand("GOOS=${OS} v=$V x=$UNSET.", map[string]string{"OS": "linux", "V": "1"})).To(Equal("GOOS=linux v=1 x=."))
}

func TestIgnore(t *testing.T) {
	ig := ParseIgnore("# comment\nbin/\n/dist\n*.test\n**/*.prof\ndocs\n!docs/keep.md\n")
	for p, ignored := range map[string]bool{
		"bin": true, "bin/x": true, "dist/install.yaml": true, "a.test": true, "pkg/a.test": false,
		"pkg/deep/cpu.prof": true, "docs/a.md": true, "docs/keep.md": false, "main.go": false, "binary": false,
	} {
		if got := ig.Ignored(p); got != ignored {
			t.Errorf("Ignored(%q) = %v, want %v", p, got, ignored)
		}
	}
}
