// Package install_test checks the install paths a user takes: the manifests of `kustomize build
// config/default` (what `kubectl apply -k config/default` and dist/install.yaml install) against a real
// kube-apiserver, and that the release's versions, images and OLM bundle agree with each other.
package install_test

import (
	"context"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

// The install suite starts a kube-apiserver that has none of our CRDs, the way a fresh cluster has none:
// only the Gateway API and Istio CRDs the operator can work with are installed beforehand.
func TestInstall(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Install suite")
}

var (
	env    *envtest.Environment
	cfg    *rest.Config
	k8s    client.Client
	ctx    context.Context
	cancel context.CancelFunc
)

var _ = BeforeSuite(func() {
	ctrl.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	ctx, cancel = context.WithCancel(context.Background())
	var err error
	env, err = testenv.New()
	Expect(err).NotTo(HaveOccurred())
	// config/crd/external only: our CRDs come with the install.
	env.CRDDirectoryPaths = []string{filepath.Join(testenv.RepoRoot(), "config", "crd", "external")}
	cfg, err = env.Start()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cfg, client.Options{Scheme: testenv.Scheme})
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
