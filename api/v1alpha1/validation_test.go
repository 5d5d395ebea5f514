package v1alpha1_test

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

// fromYAML turns a manifest into an unstructured object, exactly as kubectl would send it.
func fromYAML(manifest string) *unstructured.Unstructured {
	obj := &unstructured.Unstructured{}
	ExpectWithOffset(1, yaml.Unmarshal([]byte(manifest), &obj.Object)).To(Succeed())
	return obj
}

// cleanup deletes an object if it exists and waits until it is gone, so the singleton name is free again.
func cleanup(obj client.Object) {
	err := k8s.Delete(ctx, obj)
	if apierrors.IsNotFound(err) {
		return
	}
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	EventuallyWithOffset(1, func() bool {
		return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj))
	}).WithTimeout(10 * time.Second).Should(BeTrue())
}

const meshHeader = `
apiVersion: ambient.dev/v1alpha1
kind: AmbientMesh
metadata:
  name: default
`

const waypointHeader = `
apiVersion: ambient.dev/v1alpha1
kind: Waypoint
metadata:
  name: wp
  namespace: default
`

var _ = Describe("The CRDs", func() {
	It("are installed and established", func() {
		for _, name := range []string{"ambientmeshes.ambient.dev", "waypoints.ambient.dev"} {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			Expect(k8s.Get(ctx, types.NamespacedName{Name: name}, crd)).To(Succeed())
			established := false
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					established = true
				}
			}
			Expect(established).To(BeTrue(), "CRD %s is not established", name)
			Expect(crd.Spec.Names.ShortNames).To(HaveLen(1))
		}
	})
})

var _ = Describe("Defaults", func() {
	It("fill an AmbientMesh that only names a version", func() {
		obj := fromYAML(meshHeader + "spec:\n  version: 0.1.0\n")
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		DeferCleanup(cleanup, obj)

		mesh := &ambientv1alpha1.AmbientMesh{}
		Expect(k8s.Get(ctx, types.NamespacedName{Name: "default"}, mesh)).To(Succeed())
		s := mesh.Spec
		Expect(s.TrustDomain).To(Equal("cluster.local"))
		Expect(s.Namespace).To(Equal("ambient-system"))
		Expect(s.ImagePullPolicy).To(BeEquivalentTo("IfNotPresent"))
		Expect(s.NodeProxy.LogLevel).To(Equal(ambientv1alpha1.LogLevelInfo))
		Expect(s.NodeProxy.DrainSeconds).To(BeEquivalentTo(30))
		Expect(s.NodeProxy.PriorityClassName).To(Equal("system-node-critical"))
		Expect(s.NodeProxy.UpdateStrategy.Type).To(Equal(ambientv1alpha1.RollingUpdateStrategy))
		Expect(s.NodeProxy.CNI.BinDir).To(Equal("/opt/cni/bin"))
		Expect(s.NodeProxy.CNI.ConfDir).To(Equal("/etc/cni/net.d"))
		Expect(s.NodeProxy.Resources.Requests.Cpu().String()).To(Equal("100m"))
		Expect(s.NodeProxy.Resources.Limits.Memory().String()).To(Equal("512Mi"))
		Expect(s.XDS.Replicas).To(BeEquivalentTo(2))
		Expect(*s.XDS.Disruption.Enabled).To(BeTrue())
		Expect(s.Certificates.WorkloadCertTTL.Duration).To(Equal(24 * time.Hour))
		Expect(*s.Enrollment.AcceptIstioLabels).To(BeTrue())
		Expect(s.Enrollment.NamespaceSelector.MatchLabels).To(HaveKeyWithValue("ambient.dev/dataplane", "enabled"))
		Expect(s.Enrollment.PodSelector.MatchLabels).To(HaveKeyWithValue("ambient.dev/dataplane", "enabled"))
		Expect(s.Upgrade.ProgressDeadlineSeconds).To(BeEquivalentTo(600))
	})

	It("fill an empty Waypoint", func() {
		obj := fromYAML(waypointHeader)
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		DeferCleanup(cleanup, obj)

		wp := &ambientv1alpha1.Waypoint{}
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), wp)).To(Succeed())
		Expect(wp.Spec.For).To(Equal(ambientv1alpha1.WaypointForService))
		Expect(*wp.Spec.Disruption.Enabled).To(BeTrue())
		Expect(wp.Spec.Replicas).To(BeNil(), "replicas stays unset so that autoscaling can be chosen later")
		Expect(wp.Spec.Resources.Requests.Memory().String()).To(Equal("64Mi"))
	})

	It("fill the autoscaling target", func() {
		obj := fromYAML(waypointHeader + "spec:\n  autoscaling:\n    maxReplicas: 5\n")
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		DeferCleanup(cleanup, obj)
		wp := &ambientv1alpha1.Waypoint{}
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), wp)).To(Succeed())
		Expect(wp.Spec.Autoscaling.TargetCPUUtilizationPercentage).To(BeEquivalentTo(80))
	})
})

var _ = Describe("The samples in config/samples", func() {
	files, _ := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "*.yaml"))

	It("exist", func() {
		Expect(files).NotTo(BeEmpty())
	})

	for _, file := range files {
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		It("accepts "+filepath.Base(file)+" as it is", func() {
			data, err := os.ReadFile(file)
			Expect(err).NotTo(HaveOccurred())
			for _, doc := range strings.Split(string(data), "\n---\n") {
				obj := fromYAML(doc)
				Expect(k8s.Create(ctx, obj)).To(Succeed())
				DeferCleanup(cleanup, obj)
			}
		})
	}
})

var _ = Describe("A mesh created with the typed Go client", func() {
	It("accepts rolling-update percentages and gets the CRD defaults", func() {
		mesh := &ambientv1alpha1.AmbientMesh{
			ObjectMeta: metav1.ObjectMeta{Name: "default"},
			Spec: ambientv1alpha1.AmbientMeshSpec{
				Version: "0.1.0",
				NodeProxy: ambientv1alpha1.NodeProxySpec{UpdateStrategy: ambientv1alpha1.NodeProxyUpdateStrategy{
					Type: ambientv1alpha1.RollingUpdateStrategy,
					RollingUpdate: &ambientv1alpha1.NodeProxyRollingUpdate{
						MaxSurge:       new(intstr.FromString("10%")),
						MaxUnavailable: new(intstr.FromInt32(0)),
					},
				}},
			},
		}
		Expect(k8s.Create(ctx, mesh)).To(Succeed())
		DeferCleanup(cleanup, mesh)
		// A typed Go client leaves unset structs out, so the CRD defaults still apply to them.
		Expect(mesh.Spec.NodeProxy.Resources.Requests.Memory().String()).To(Equal("64Mi"))
		Expect(mesh.Spec.XDS.Disruption.Enabled).To(HaveValue(BeTrue()))
		Expect(mesh.Spec.Certificates.WorkloadCertTTL).NotTo(BeNil())
	})
})

var _ = Describe("spec.namespace", func() {
	It("cannot be changed after creation", func() {
		obj := fromYAML(meshHeader + "spec:\n  version: 0.1.0\n  namespace: mesh-a\n")
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		DeferCleanup(cleanup, obj)
		Expect(unstructured.SetNestedField(obj.Object, "mesh-b", "spec", "namespace")).To(Succeed())
		err := k8s.Update(ctx, obj)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec.namespace is immutable"))
	})

	It("lets other fields change", func() {
		obj := fromYAML(meshHeader + "spec:\n  version: 0.1.0\n")
		Expect(k8s.Create(ctx, obj)).To(Succeed())
		DeferCleanup(cleanup, obj)
		Expect(unstructured.SetNestedField(obj.Object, "0.2.0", "spec", "version")).To(Succeed())
		Expect(k8s.Update(ctx, obj)).To(Succeed())
	})
})

var _ = Describe("Invalid objects", func() {
	// Every entry is a manifest a user could write by mistake and the text the rejection must contain:
	// the path of the offending field, so that the user knows what to fix.
	DescribeTable("are rejected with a message naming the field",
		func(manifest string, wants ...string) {
			obj := fromYAML(manifest)
			err := k8s.Create(ctx, obj)
			if err == nil {
				cleanup(obj)
			}
			Expect(err).To(HaveOccurred(), "the API server accepted an invalid object")
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
			for _, want := range wants {
				Expect(err.Error()).To(ContainSubstring(want))
			}
		},
		Entry("an AmbientMesh not named default",
			strings.Replace(meshHeader, "name: default", "name: other", 1)+"spec:\n  version: 0.1.0\n",
			"metadata.name must be 'default'"),
		Entry("neither version nor image",
			meshHeader+"spec:\n  trustDomain: example.org\n",
			"spec.version", "spec.version or spec.image must be set"),
		Entry("a version that is not semantic",
			meshHeader+"spec:\n  version: latest\n",
			"spec.version"),
		Entry("an image with whitespace",
			meshHeader+"spec:\n  image: \"registry/ambient dataplane:1\"\n",
			"spec.image"),
		Entry("a trust domain with upper case and a slash",
			meshHeader+"spec:\n  version: 0.1.0\n  trustDomain: Example.org/x\n",
			"spec.trustDomain"),
		Entry("a namespace that is not a DNS label",
			meshHeader+"spec:\n  version: 0.1.0\n  namespace: Ambient_System\n",
			"spec.namespace"),
		Entry("an unknown log level",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    logLevel: verbose\n",
			"spec.nodeProxy.logLevel", "supported values"),
		Entry("a drain of zero seconds",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    drainSeconds: 0\n",
			"spec.nodeProxy.drainSeconds"),
		Entry("a drain longer than an hour",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    drainSeconds: 7200\n",
			"spec.nodeProxy.drainSeconds"),
		Entry("an unknown update strategy",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    updateStrategy:\n      type: Recreate\n",
			"spec.nodeProxy.updateStrategy.type"),
		Entry("rollingUpdate settings with the NodeByNode strategy",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    updateStrategy:\n      type: NodeByNode\n      rollingUpdate:\n        maxSurge: 1\n",
			"spec.nodeProxy.updateStrategy.rollingUpdate", "only be set when"),
		Entry("maxSurge and maxUnavailable both zero",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    updateStrategy:\n      rollingUpdate:\n        maxSurge: 0\n        maxUnavailable: \"0%\"\n",
			"spec.nodeProxy.updateStrategy.rollingUpdate", "cannot both be zero"),
		Entry("a negative maxSurge",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    updateStrategy:\n      rollingUpdate:\n        maxSurge: -1\n",
			"spec.nodeProxy.updateStrategy.rollingUpdate.maxSurge"),
		Entry("a maxUnavailable that is neither a number nor a percentage",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    updateStrategy:\n      rollingUpdate:\n        maxUnavailable: some\n",
			"spec.nodeProxy.updateStrategy.rollingUpdate.maxUnavailable"),
		Entry("a relative CNI directory",
			meshHeader+"spec:\n  version: 0.1.0\n  nodeProxy:\n    cni:\n      confDir: etc/cni\n",
			"spec.nodeProxy.cni.confDir"),
		Entry("no xDS replicas",
			meshHeader+"spec:\n  version: 0.1.0\n  xds:\n    replicas: 0\n",
			"spec.xds.replicas"),
		Entry("too many xDS replicas",
			meshHeader+"spec:\n  version: 0.1.0\n  xds:\n    replicas: 11\n",
			"spec.xds.replicas"),
		Entry("both minAvailable and maxUnavailable for the xDS PDB",
			meshHeader+"spec:\n  version: 0.1.0\n  xds:\n    disruption:\n      minAvailable: 1\n      maxUnavailable: 1\n",
			"spec.xds.disruption", "mutually exclusive"),
		Entry("PDB bounds with the PDB disabled",
			meshHeader+"spec:\n  version: 0.1.0\n  xds:\n    disruption:\n      enabled: false\n      minAvailable: 1\n",
			"spec.xds.disruption", "require disruption.enabled"),
		Entry("a workload certificate TTL of one minute",
			meshHeader+"spec:\n  version: 0.1.0\n  certificates:\n    workloadCertTTL: 1m\n",
			"spec.certificates.workloadCertTTL", "between 10m and 720h"),
		Entry("a root TTL together with a user-provided root",
			meshHeader+"spec:\n  version: 0.1.0\n  certificates:\n    rootSecretName: my-root\n    rootTTL: 8760h\n",
			"spec.certificates.rootTTL", "applies only to a generated root"),
		Entry("a progress deadline of ten seconds",
			meshHeader+"spec:\n  version: 0.1.0\n  upgrade:\n    progressDeadlineSeconds: 10\n",
			"spec.upgrade.progressDeadlineSeconds"),
		Entry("a malformed enrollment selector",
			meshHeader+"spec:\n  version: 0.1.0\n  enrollment:\n    namespaceSelector:\n      matchExpressions:\n      - key: team\n        operator: Maybe\n",
			"spec.enrollment.namespaceSelector", "operator must be one of"),
		Entry("an Exists selector requirement with values",
			meshHeader+"spec:\n  version: 0.1.0\n  enrollment:\n    podSelector:\n      matchExpressions:\n      - key: team\n        operator: Exists\n        values: [a]\n",
			"spec.enrollment.podSelector", "values must be non-empty for In and NotIn and empty for Exists"),
		Entry("a Waypoint for something other than service, workload or all",
			waypointHeader+"spec:\n  for: gateway\n",
			"spec.for", "supported values"),
		Entry("a Waypoint service account that is not a DNS name",
			waypointHeader+"spec:\n  serviceAccount: Bad_Account\n",
			"spec.serviceAccount"),
		Entry("a Waypoint with both replicas and autoscaling",
			waypointHeader+"spec:\n  replicas: 2\n  autoscaling:\n    maxReplicas: 4\n",
			"spec.replicas", "mutually exclusive"),
		Entry("a Waypoint autoscaling minimum above its maximum",
			waypointHeader+"spec:\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 2\n",
			"spec.autoscaling.minReplicas", "must not exceed"),
		Entry("a Waypoint autoscaling without a maximum",
			waypointHeader+"spec:\n  autoscaling:\n    minReplicas: 2\n",
			"spec.autoscaling.maxReplicas", "Required value"),
		Entry("a Waypoint with 101 replicas",
			waypointHeader+"spec:\n  replicas: 101\n",
			"spec.replicas"),
		Entry("a Waypoint name too long for its Deployment",
			strings.Replace(waypointHeader, "name: wp", "name: "+strings.Repeat("w", 60), 1),
			"metadata.name must be at most 52 characters"),
	)
})
