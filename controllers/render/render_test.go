package render

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// defaultedMesh is a mesh as the API server returns it after applying the CRD defaults.
func defaultedMesh() *ambientv1alpha1.AmbientMesh {
	enabled := map[string]string{ambientv1alpha1.DataplaneLabel: ambientv1alpha1.DataplaneEnabled}
	return &ambientv1alpha1.AmbientMesh{
		ObjectMeta: metav1.ObjectMeta{Name: "default", UID: "mesh-uid", Generation: 1},
		Spec: ambientv1alpha1.AmbientMeshSpec{
			Version: "0.1.0", TrustDomain: "cluster.local", Namespace: "ambient-system", ImagePullPolicy: corev1.PullIfNotPresent,
			NodeProxy: ambientv1alpha1.NodeProxySpec{
				LogLevel: "info", DrainSeconds: 30, PriorityClassName: "system-node-critical",
				UpdateStrategy: ambientv1alpha1.NodeProxyUpdateStrategy{Type: ambientv1alpha1.RollingUpdateStrategy},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
				},
			},
			XDS:          ambientv1alpha1.XDSSpec{Replicas: 2, Disruption: ambientv1alpha1.DisruptionSpec{Enabled: new(true)}},
			Certificates: ambientv1alpha1.CertificatesSpec{WorkloadCertTTL: &metav1.Duration{Duration: 86400e9}},
			Enrollment: ambientv1alpha1.EnrollmentSpec{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: enabled},
				PodSelector:       &metav1.LabelSelector{MatchLabels: enabled},
				AcceptIstioLabels: new(true),
			},
			Upgrade: ambientv1alpha1.UpgradeSpec{ProgressDeadlineSeconds: 600},
		},
	}
}

var (
	v010 = Component{Version: "0.1.0", Image: "ghcr.io/ambient-dev/ambient-dataplane:v0.1.0"}
	v011 = Component{Version: "0.1.1", Image: "ghcr.io/ambient-dev/ambient-dataplane:v0.1.1"}
)

const testRoot = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func TestMeshGolden(t *testing.T) {
	nodeByNode := defaultedMesh()
	nodeByNode.Spec.NodeProxy.UpdateStrategy = ambientv1alpha1.NodeProxyUpdateStrategy{Type: ambientv1alpha1.NodeByNodeStrategy}
	nodeByNode.Spec.NodeProxy.NodeSelector = map[string]string{"kubernetes.io/os": "linux"}
	nodeByNode.Spec.NodeProxy.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "mesh", Effect: corev1.TaintEffectNoSchedule}}
	nodeByNode.Spec.XDS.Disruption = ambientv1alpha1.DisruptionSpec{Enabled: new(true), MinAvailable: new(intstr.FromString("50%"))}
	nodeByNode.Spec.Enrollment.AcceptIstioLabels = new(false)
	nodeByNode.Spec.Enrollment.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"payments", "web"}},
	}}
	noPDB := defaultedMesh()
	noPDB.Spec.XDS.Disruption.Enabled = new(false)

	cases := []struct {
		name string
		mesh *ambientv1alpha1.AmbientMesh
		in   MeshInputs
	}{
		{"mesh-defaults", defaultedMesh(), MeshInputs{XDS: v010, Node: v010, CASecretName: CARootSecretName, RootCertPEM: testRoot}},
		{"mesh-upgrading-xds-first", defaultedMesh(), MeshInputs{XDS: v011, Node: v010, CASecretName: CARootSecretName, RootCertPEM: testRoot}},
		{"mesh-node-by-node", nodeByNode, MeshInputs{XDS: v010, Node: v010, CASecretName: "my-root", RootCertPEM: testRoot}},
		{"mesh-without-pdb", noPDB, MeshInputs{XDS: v010, Node: v010, CASecretName: CARootSecretName, RootCertPEM: testRoot}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Mesh(tc.mesh, tc.in)
			NewWithT(t).Expect(err).NotTo(HaveOccurred())
			checkGolden(t, tc.name, objs)
		})
	}
}

func TestMeshRejectsAnInvalidSelector(t *testing.T) {
	g := NewWithT(t)
	mesh := defaultedMesh()
	mesh.Spec.Enrollment.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}}
	_, err := Mesh(mesh, MeshInputs{XDS: v010, Node: v010})
	g.Expect(err).To(MatchError(ContainSubstring("spec.enrollment.podSelector")))
}

func TestWaypointGolden(t *testing.T) {
	mesh := defaultedMesh()
	cases := []struct {
		name string
		in   WaypointInputs
	}{
		{"waypoint-defaults", WaypointInputs{Name: "waypoint", Namespace: "bookinfo", Component: v010, Mesh: mesh,
			Spec: ambientv1alpha1.WaypointSpec{For: ambientv1alpha1.WaypointForService, Disruption: ambientv1alpha1.DisruptionSpec{Enabled: new(true)}}}},
		{"waypoint-autoscaled-for-one-account", WaypointInputs{Name: "reviews-wp", Namespace: "bookinfo", Component: v010, Mesh: mesh,
			Spec: ambientv1alpha1.WaypointSpec{
				For: ambientv1alpha1.WaypointForAll, ServiceAccount: "bookinfo-reviews",
				Autoscaling: &ambientv1alpha1.AutoscalingSpec{MinReplicas: new(int32(2)), MaxReplicas: 6, TargetCPUUtilizationPercentage: 70},
				Disruption:  ambientv1alpha1.DisruptionSpec{Enabled: new(false)},
			}}},
		{"waypoint-gateway-pinned-image", WaypointInputs{Name: "gw", Namespace: "web", Component: Component{Version: "0.1.0", Image: "mirror.local/dp:custom"}, Mesh: mesh,
			ExtraPodLabels: map[string]string{LabelGatewayName: "gw"},
			Spec:           ambientv1alpha1.WaypointSpec{For: ambientv1alpha1.WaypointForWorkload, Replicas: new(int32(3)), Image: "mirror.local/dp:custom"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkGolden(t, tc.name, Waypoint(tc.in))
		})
	}
}

func checkGolden(t *testing.T, name string, objs []client.Object) {
	t.Helper()
	g := NewWithT(t)
	var b strings.Builder
	for _, obj := range objs {
		m, err := toApplyMap(obj)
		g.Expect(err).NotTo(HaveOccurred())
		out, err := yaml.Marshal(m)
		g.Expect(err).NotTo(HaveOccurred())
		b.WriteString("---\n")
		b.Write(out)
	}
	path := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		g.Expect(os.WriteFile(path, []byte(b.String()), 0o644)).To(Succeed())
	}
	want, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred(), "missing golden file; run go test ./controllers/render -update")
	g.Expect(b.String()).To(Equal(string(want)), "rendering changed; if intended, run go test ./controllers/render -update and review the diff")
}

func TestResolveImage(t *testing.T) {
	cases := []struct {
		version, override, want, err string
	}{
		{version: "0.1.0", want: "reg/ambient-dataplane:v0.1.0"},
		{version: "v0.1.7", want: "reg/ambient-dataplane:v0.1.7"},
		{version: "0.1.0-rc.1", want: "reg/ambient-dataplane:v0.1.0-rc.1"},
		{version: "9.0.0", override: "mirror/dp:9", want: "mirror/dp:9"},
		{version: "0.2.0", err: "not supported by this operator"},
		{version: "banana", err: "not a semantic version"},
	}
	for _, tc := range cases {
		t.Run(tc.version+tc.override, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ResolveImage("reg/", tc.version, tc.override)
			if tc.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

func TestContains(t *testing.T) {
	cases := []struct {
		name       string
		have, want any
		ok         bool
	}{
		{"equal scalars", "a", "a", true},
		{"different scalars", "a", "b", false},
		{"extra keys in have", map[string]any{"a": int64(1), "b": "x"}, map[string]any{"a": int64(1)}, true},
		{"missing key", map[string]any{"b": "x"}, map[string]any{"a": int64(1)}, false},
		{"list same length with defaults", []any{map[string]any{"name": "c", "tmp": "x"}}, []any{map[string]any{"name": "c"}}, true},
		{"list longer in have", []any{"a", "b"}, []any{"a"}, false},
		{"nested change", map[string]any{"s": map[string]any{"r": int64(2)}}, map[string]any{"s": map[string]any{"r": int64(3)}}, false},
		{"type mismatch", map[string]any{"s": "x"}, map[string]any{"s": map[string]any{}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(contains(tc.have, tc.want)).To(Equal(tc.ok))
		})
	}
}
