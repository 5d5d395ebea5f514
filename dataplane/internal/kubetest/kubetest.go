// Package kubetest starts envtest's real kube-apiserver and etcd (built from source by `make envtest` into
// bin/k8s of the repository) for the data plane's tests, with the mesh's CRDs, the Gateway API CRDs and
// Istio's AuthorizationPolicy CRD installed from config/crd of the repository.
package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// RepoRoot is the root of the repository (the parent of the dataplane module).
func RepoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("kubetest: cannot locate the source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Env is a running API server.
type Env struct {
	Config *rest.Config
	env    *envtest.Environment
}

// Start starts the API server with the CRDs installed. Stop it with Stop.
func Start() (*Env, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "bin", "k8s")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil { // #nosec G703 -- the test environment names the directory
			return nil, fmt.Errorf("envtest binary %s not found in %s: run `make envtest` in the repository root", bin, dir)
		}
	}
	root := RepoRoot()
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths: []string{
			filepath.Join(root, "config", "crd", "bases"),
			filepath.Join(root, "config", "crd", "external"),
		},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest: %w", err)
	}
	return &Env{Config: cfg, env: env}, nil
}

// Stop stops the API server.
func (e *Env) Stop() error { return e.env.Stop() }
