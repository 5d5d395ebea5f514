package bundle

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/ambient-dev/ambient-operator/hack/release/internal/kustomize"
)

const input = `
apiVersion: operators.coreos.com/v1alpha1
kind: ClusterServiceVersion
metadata:
  name: base
  annotations: {capabilities: Basic Install}
spec:
  displayName: Test
  installModes: [{type: AllNamespaces, supported: true}]
  install: {strategy: deployment}
  customresourcedefinitions:
    owned:
    - name: things.test.dev
      displayName: Thing
      description: A thing.
      specDescriptors: [{path: size, displayName: Size}]
      statusDescriptors: [{path: "conditions", displayName: Conditions}]
---
apiVersion: scorecard.operatorframework.io/v1alpha3
kind: Configuration
metadata: {name: config}
stages: []
---
apiVersion: v1
kind: Namespace
metadata: {name: op-system}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: things.test.dev
  labels: {app.kubernetes.io/managed-by: kustomize, app.kubernetes.io/part-of: op}
spec:
  group: test.dev
  names: {kind: Thing, plural: things, singular: thing, listKind: ThingList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status:
            type: object
            properties:
              conditions: {type: array, items: {type: object}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: op, namespace: op-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: leader, namespace: op-system}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: leader, namespace: op-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: leader}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: manager}
rules: [{apiGroups: [test.dev], resources: [things], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: manager}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: manager}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: thing-viewer}
rules: [{apiGroups: [test.dev], resources: [things], verbs: [get]}]
---
apiVersion: v1
kind: Service
metadata: {name: metrics, namespace: op-system}
spec: {selector: {app: op}, ports: [{port: 8443}]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: op
  namespace: op-system
  labels: {app: op, app.kubernetes.io/managed-by: kustomize}
spec:
  selector: {matchLabels: {app: op}}
  template:
    metadata: {labels: {app: op}}
    spec:
      serviceAccountName: op
      containers: [{name: manager, image: "controller:latest", args: [--leader-elect]}]
---
apiVersion: test.dev/v1
kind: Thing
metadata: {name: sample}
spec: {size: 3}
`

func objects(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := kustomize.Decode([]byte(stream))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func options() Options {
	return Options{
		Package: "op", Version: "1.2.3", OperatorImage: "reg.test/op:v1.2.3",
		RelatedImages: map[string]string{"data": "reg.test/data:v1.2.3"},
		ManagerArgs:   []string{"--registry=reg.test"},
		Channels:      []string{"stable", "fast"}, DefaultChannel: "stable",
		IconSVG: []byte("<svg/>"),
	}
}

func TestGenerate(t *testing.T) {
	g := NewWithT(t)
	files, err := Generate(objects(t, input), options())
	g.Expect(err).NotTo(HaveOccurred())
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	g.Expect(names).To(ConsistOf(
		"manifests/op.clusterserviceversion.yaml",
		"manifests/test.dev_things.yaml",
		"manifests/metrics_v1_service.yaml",
		"manifests/thing-viewer_rbac.authorization.k8s.io_v1_clusterrole.yaml",
		"metadata/annotations.yaml",
		"tests/scorecard/config.yaml",
		Dockerfile,
	), "the Namespace and the service account go (OLM makes them), bound roles become permissions")

	csv := map[string]any{}
	g.Expect(yaml.Unmarshal(files["manifests/op.clusterserviceversion.yaml"], &csv)).To(Succeed())
	u := &unstructured.Unstructured{Object: csv}
	g.Expect(u.GetName()).To(Equal("op.v1.2.3"))
	g.Expect(u.GetAnnotations()).To(HaveKeyWithValue("containerImage", "reg.test/op:v1.2.3"))
	g.Expect(u.GetAnnotations()["alm-examples"]).To(ContainSubstring(`"size": 3`))
	version, _, _ := unstructured.NestedString(csv, "spec", "version")
	g.Expect(version).To(Equal("1.2.3"))

	owned, _, _ := unstructured.NestedSlice(csv, "spec", "customresourcedefinitions", "owned")
	g.Expect(owned).To(ConsistOf(And(HaveKeyWithValue("kind", "Thing"), HaveKeyWithValue("version", "v1"))))

	strategy, _, _ := unstructured.NestedMap(csv, "spec", "install", "spec")
	g.Expect(strategy["permissions"]).To(ConsistOf(And(
		HaveKeyWithValue("serviceAccountName", "op"),
		HaveKeyWithValue("rules", ConsistOf(HaveKeyWithValue("resources", ConsistOf("leases")))),
	)))
	g.Expect(strategy["clusterPermissions"]).To(ConsistOf(And(
		HaveKeyWithValue("serviceAccountName", "op"),
		HaveKeyWithValue("rules", ConsistOf(HaveKeyWithValue("verbs", ConsistOf("list")))),
	)))
	deps := strategy["deployments"].([]any)
	g.Expect(deps).To(HaveLen(1))
	dep := deps[0].(map[string]any)
	g.Expect(dep["label"]).To(Equal(map[string]any{"app": "op"}), "the managed-by: kustomize label is dropped")
	containers, _, _ := unstructured.NestedSlice(dep, "spec", "template", "spec", "containers")
	g.Expect(containers[0]).To(And(
		HaveKeyWithValue("image", "reg.test/op:v1.2.3"),
		HaveKeyWithValue("args", ConsistOf("--leader-elect", "--registry=reg.test")),
	))
	related, _, _ := unstructured.NestedSlice(csv, "spec", "relatedImages")
	g.Expect(related).To(Equal([]any{
		map[string]any{"name": "op", "image": "reg.test/op:v1.2.3"},
		map[string]any{"name": "data", "image": "reg.test/data:v1.2.3"},
	}))
	g.Expect(string(files["manifests/test.dev_things.yaml"])).NotTo(ContainSubstring("managed-by"))
	g.Expect(string(files["manifests/metrics_v1_service.yaml"])).NotTo(ContainSubstring("namespace:"))
	g.Expect(string(files["metadata/annotations.yaml"])).To(ContainSubstring("operators.operatorframework.io.bundle.channels.v1: stable,fast\n"))
	g.Expect(string(files[Dockerfile])).To(ContainSubstring("LABEL operators.operatorframework.io.bundle.package.v1=op\n"))

	again, err := Generate(objects(t, input), options())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(Equal(files), "the bundle is a function of its input")
}

func TestGenerateRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(string) string
		opts   func(*Options)
		expect string
	}{
		{name: "a descriptor path the schema lacks", edit: func(s string) string { return strings.Replace(s, "path: size", "path: sise", 1) },
			expect: `specDescriptor "sise": the CRD schema has no field spec.sise`},
		{name: "a CRD the CSV base does not describe", edit: func(s string) string {
			return strings.Replace(s, "name: things.test.dev\n      displayName", "name: other.test.dev\n      displayName", 1)
		},
			expect: "CRD things.test.dev is installed but not described in the CSV base"},
		{name: "no sample of an owned kind", edit: func(s string) string { return s[:strings.LastIndex(s, "---")] },
			expect: "no sample of Thing"},
		{name: "a kind OLM cannot install", edit: func(s string) string {
			return s + "---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: j, namespace: op-system}\n"
		},
			expect: "Job j (batch/v1): OLM bundles cannot carry this kind"},
		{name: "a version that is not semver", opts: func(o *Options) { o.Version = "v1.2" }, expect: "is not a semantic version"},
		{name: "a default channel outside the channels", opts: func(o *Options) { o.DefaultChannel = "candidate" }, expect: "default channel"},
		{name: "a field the CSV API does not know", edit: func(s string) string { return strings.Replace(s, "displayName: Test", "displayNmae: Test", 1) },
			expect: "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			in, opts := input, options()
			if tc.edit != nil {
				in = tc.edit(in)
			}
			if tc.opts != nil {
				tc.opts(&opts)
			}
			_, err := Generate(objects(t, in), opts)
			g.Expect(err).To(MatchError(ContainSubstring(tc.expect)))
		})
	}
}
