// Package e2e is the end-to-end suite: a local multi-node cluster (network namespaces as nodes and
// pods, veth links, real iptables, the real operator and ambient-dataplane processes, driven from a real
// API server) and traffic between its pods. It needs root; it skips without it.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/internal/testenv"
	"github.com/ambient-dev/ambient-operator/test/localcluster"
)

const inNamespace = "AMBIENT_E2E_NETNS"

var (
	cluster *localcluster.Cluster
	ctx     = context.Background()
)

func TestE2E(t *testing.T) {
	if err := localcluster.CheckPrerequisites(); err != nil {
		t.Skipf("end-to-end suite skipped: %v", err)
	}
	parent, err := localcluster.RunInNamespace("ambient-e2e", inNamespace)
	if parent {
		if err != nil {
			t.Fatalf("the end-to-end suite failed inside its network namespace: %v", err)
		}
		return
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "End-to-end suite")
}

// binaries builds the operator, the data plane (ambient-dataplane and, beside it, ambient-proxy) and the
// demo applications, or takes them from
// $AMBIENT_E2E_BIN (make test-e2e builds them first).
func binaries() (manager, dataplane, app string) {
	dir := os.Getenv("AMBIENT_E2E_BIN")
	if dir == "" {
		dir = GinkgoT().TempDir()
		root := testenv.RepoRoot()
		for _, b := range []struct{ out, dir, pkg, tags string }{
			{"manager", root, ".", ""},
			{"ambient-dataplane", filepath.Join(root, "dataplane"), "./cmd/ambient-dataplane", ""},
			{"ambient-proxy", filepath.Join(root, "dataplane"), "./cmd/ambient-dataplane", "proxyonly"},
			{"ambient-demo", root, "./hack/demo", ""},
		} {
			cmd := exec.Command("go", "build", "-tags", b.tags, "-o", filepath.Join(dir, b.out), b.pkg)
			cmd.Dir = b.dir
			out, err := cmd.CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "build %s: %s", b.out, out)
		}
	}
	return filepath.Join(dir, "manager"), filepath.Join(dir, "ambient-dataplane"), filepath.Join(dir, "ambient-demo")
}

var _ = BeforeSuite(func() {
	manager, dataplane, app := binaries()
	work := os.Getenv("AMBIENT_E2E_WORK")
	if work == "" {
		work = GinkgoT().TempDir()
	}
	var err error
	cluster, err = localcluster.Start(ctx, localcluster.Options{
		Name: "ambe", Nodes: 2, WorkDir: work, Progress: GinkgoWriter,
		ManagerBin: manager, DataplaneBin: dataplane, AppBin: app,
	})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		if CurrentSpecReport().Failed() {
			fmt.Fprintf(GinkgoWriter, "process logs are in %s/logs\n", work)
		}
		Expect(cluster.Stop()).To(Succeed())
	})
	setUpMesh()
})

// eventually is Eventually with the suite's patience for a multi-process cluster.
func eventually(f any) AsyncAssertion {
	return Eventually(f).WithTimeout(90 * time.Second).WithPolling(250 * time.Millisecond)
}
