// Package testenv starts envtest's real kube-apiserver and etcd (built from source by `make envtest` into
// bin/k8s) with the project's CRDs and the Gateway API CRDs installed. Every envtest suite of the operator
// uses it, so they all run against the same API server build and the same CRDs a user installs.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
)

// Scheme knows the built-in kinds, ambient.dev and the Gateway API.
var Scheme = NewScheme()

// NewScheme returns a scheme with the built-in kinds, ambient.dev and the Gateway API.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(ambientv1alpha1.AddToScheme(s))
	utilruntime.Must(gatewayv1.Install(s))
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	return s
}

// RepoRoot is the root of this repository, found from this source file's location.
func RepoRoot() string {
	_, file, _, ok := goruntime.Caller(0)
	if !ok {
		panic("testenv: cannot locate the source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// CRDPaths are the CRD directories a test environment installs: ours and the Gateway API's.
func CRDPaths() []string {
	root := RepoRoot()
	return []string{
		filepath.Join(root, "config", "crd", "bases"),
		filepath.Join(root, "config", "crd", "external"),
	}
}

// AssetsDir is where kube-apiserver and etcd are: $KUBEBUILDER_ASSETS, else bin/k8s of this repository.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "bin", "k8s")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("envtest binary %s not found in %s: run `make envtest` to build it from source", bin, dir)
		}
	}
	return dir, nil
}

// New returns an envtest environment with the CRDs installed, not yet started.
func New() (*envtest.Environment, error) {
	dir, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	return &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     CRDPaths(),
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme,
	}, nil
}
