package main

import (
	"bytes"
	"os/exec"
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
	g.Expect(out.String()).To(HavePrefix(binaryName + " 1.2.3 "))
}

// TestSubcommands: ambient-dataplane has every role; ambient-proxy (-tags proxyonly) all but the xDS
// server.
func TestSubcommands(t *testing.T) {
	g := NewWithT(t)
	names := map[string]bool{}
	for _, c := range newRootCommand().Commands() {
		names[c.Name()] = true
	}
	for _, want := range []string{"version", "node", "waypoint", "cni"} {
		g.Expect(names).To(HaveKey(want))
	}
	if binaryName == "ambient-dataplane" {
		g.Expect(names).To(HaveKey("xds"))
	} else {
		g.Expect(names).NotTo(HaveKey("xds"), "the xds command is in ambient-dataplane only")
	}
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

// TestProxyBuildLinksNoKubernetes keeps the proxies' binary small: nothing on the proxy path may import a
// Kubernetes package (their initialisation alone doubled a proxy's memory, docs/performance.md).
func TestProxyBuildLinksNoKubernetes(t *testing.T) {
	g := NewWithT(t)
	out, err := exec.Command("go", "list", "-tags", "proxyonly", "-deps", ".").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	var k8s []string
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") { // client-go, the API types, apimachinery (sigs.k8s.io/yaml is fine)
			k8s = append(k8s, pkg)
		}
	}
	g.Expect(k8s).To(BeEmpty(), "packages linked into ambient-proxy")
	g.Expect(strings.Fields(string(out))).To(ContainElement("github.com/ambient-dev/ambient-operator/dataplane/xdsclient"))
}
