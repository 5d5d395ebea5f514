package install_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

func readFile(g Gomega, parts ...string) []byte {
	data, err := os.ReadFile(filepath.Join(append([]string{testenv.RepoRoot()}, parts...)...))
	g.Expect(err).NotTo(HaveOccurred())
	return data
}

// makeVar returns the value the Makefile gives a variable (`NAME ?= value` or `NAME := value`).
func makeVar(g Gomega, name string) string {
	m := regexp.MustCompile(`(?m)^` + name + ` [?:]= (\S+)$`).FindSubmatch(readFile(g, "Makefile"))
	g.Expect(m).NotTo(BeNil(), "the Makefile sets no %s", name)
	return string(m[1])
}

// The release has one version: the Makefile's VERSION is the operator's and the data plane's, the tag
// of both images, the version the sample mesh runs and the version of the OLM bundle; and the operator
// knows the data-plane image of that version.
func TestReleaseVersionsAgree(t *testing.T) {
	g := NewWithT(t)
	version := makeVar(g, "VERSION")
	g.Expect(makeVar(g, "DEFAULT_REGISTRY")).To(Equal(render.DefaultRegistry),
		"the Makefile's DEFAULT_REGISTRY must be the registry the operator takes data-plane images from")

	dataplaneImage, err := render.ResolveImage(render.DefaultRegistry, version, "")
	g.Expect(err).NotTo(HaveOccurred(), "VERSION %s must be a data-plane version the operator supports (render.SupportedMinors)", version)

	mesh := &ambientv1alpha1.AmbientMesh{}
	g.Expect(yaml.Unmarshal(readFile(g, "config", "samples", "ambient_v1alpha1_ambientmesh.yaml"), mesh)).To(Succeed())
	g.Expect(mesh.Spec.Version).To(Equal(version), "the sample AmbientMesh must run the release's data-plane version")

	var kust struct {
		Images []struct{ Name, NewName, NewTag string }
	}
	g.Expect(yaml.Unmarshal(readFile(g, "config", "manager", "kustomization.yaml"), &kust)).To(Succeed())
	g.Expect(kust.Images).To(ContainElement(And(
		HaveField("Name", "controller"),
		HaveField("NewName", render.DefaultRegistry+"/ambient-operator"),
		HaveField("NewTag", "v"+version),
	)), "config/manager must install the release's operator image")

	csv := &unstructured.Unstructured{}
	g.Expect(yaml.Unmarshal(readFile(g, "bundle", "manifests", "ambient-operator.clusterserviceversion.yaml"), &csv.Object)).To(Succeed())
	g.Expect(csv.GetName()).To(Equal("ambient-operator.v" + version))
	csvVersion, _, _ := unstructured.NestedString(csv.Object, "spec", "version")
	g.Expect(csvVersion).To(Equal(version))
	description, _, _ := unstructured.NestedString(csv.Object, "spec", "description")
	g.Expect(description).To(ContainSubstring("version: "+version),
		"the getting-started example of config/manifests/bases/ambient-operator.clusterserviceversion.yaml must run the release's version")
	operatorImage := render.DefaultRegistry + "/ambient-operator:v" + version
	g.Expect(csv.GetAnnotations()).To(HaveKeyWithValue("containerImage", operatorImage))

	deps, _, err := unstructured.NestedSlice(csv.Object, "spec", "install", "spec", "deployments")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(deps).To(HaveLen(1))
	dep := &appsv1.DeploymentSpec{}
	spec, _, _ := unstructured.NestedMap(deps[0].(map[string]any), "spec")
	raw, err := yaml.Marshal(spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(yaml.Unmarshal(raw, dep)).To(Succeed())
	g.Expect(dep.Template.Spec.Containers[0].Image).To(Equal(operatorImage))
	// The bundle's data-plane image must be the one the operator derives, from the registry it is given.
	registry := render.DefaultRegistry
	for _, a := range dep.Template.Spec.Containers[0].Args {
		if r, ok := strings.CutPrefix(a, "--dataplane-registry="); ok {
			registry = r
		}
	}
	want, err := render.ResolveImage(registry, version, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(want).To(Equal(dataplaneImage))
	related, _, _ := unstructured.NestedSlice(csv.Object, "spec", "relatedImages")
	g.Expect(related).To(ConsistOf(
		map[string]any{"name": "ambient-operator", "image": operatorImage},
		map[string]any{"name": "ambient-dataplane", "image": want},
	))
}

// The bundle carries the CRDs of config/crd/bases; `make verify` keeps it current, this says what
// "current" must mean if the generator changes.
func TestBundleCarriesTheCRDs(t *testing.T) {
	g := NewWithT(t)
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "crd", "bases", "*.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(files).NotTo(BeEmpty())
	for _, f := range files {
		want, got := map[string]any{}, map[string]any{}
		g.Expect(yaml.Unmarshal(readFile(g, "config", "crd", "bases", filepath.Base(f)), &want)).To(Succeed())
		g.Expect(yaml.Unmarshal(readFile(g, "bundle", "manifests", filepath.Base(f)), &got)).To(Succeed())
		g.Expect(got["spec"]).To(Equal(want["spec"]), "bundle/manifests/%s", filepath.Base(f))
	}
}
