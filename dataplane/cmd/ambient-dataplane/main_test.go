package main

import (
	"bytes"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/dataplane/version"
)

func TestVersionCommand(t *testing.T) {
	g := NewWithT(t)
	old := version.Version
	version.Version = "1.2.3"
	t.Cleanup(func() { version.Version = old })

	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"version"})
	g.Expect(cmd.Execute()).To(Succeed())
	g.Expect(out.String()).To(HavePrefix("ambient-dataplane 1.2.3 "))
}

func TestHelpListsSubcommands(t *testing.T) {
	g := NewWithT(t)
	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--help"})
	g.Expect(cmd.Execute()).To(Succeed())
	g.Expect(out.String()).To(ContainSubstring("version"))
	g.Expect(strings.Count(out.String(), "\n")).To(BeNumerically(">", 5))
}

func TestUnknownSubcommandFails(t *testing.T) {
	g := NewWithT(t)
	cmd := newRootCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"teleport"})
	g.Expect(cmd.Execute()).NotTo(Succeed())
}
