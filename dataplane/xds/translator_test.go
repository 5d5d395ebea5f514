package xds

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/kubetest"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
)

const waitLong = 10 * time.Second

func workloadOf(st *state.Store, key string) func() *api.Workload {
	return func() *api.Workload {
		if w := st.Load().Workload(key); w != nil {
			return w.Proto
		}
		return nil
	}
}

func serviceOf(st *state.Store, key string) func() *api.Service {
	return func() *api.Service {
		if s := st.Load().Service(key); s != nil {
			return s.Proto
		}
		return nil
	}
}

func policyNames(st *state.Store) func() []string {
	return func() []string {
		var out []string
		for p := range st.Load().Policies().All() {
			out = append(out, p.Key())
		}
		return out
	}
}

func equalProto(want proto.Message) OmegaMatcher {
	return WithTransform(func(got proto.Message) bool { return proto.Equal(got, want) }, BeTrue())
}

// TestKubeWorkloadsAndServices: pods, services and endpoint slices become Workloads and Services, with
// named target ports resolved from the slices, readiness, canonical labels and enrollment.
func TestKubeWorkloadsAndServices(t *testing.T) {
	g := NewWithT(t)
	k := startKube(t)
	_, st := k.client(nodeSub, nodeToken)

	ns := k.namespace("wl", map[string]string{LabelDataplane: "enabled"})
	k.pod(ns, "a", podSpec{labels: map[string]string{"app": "a", "version": "v1"}, sa: "default", ip: "10.244.0.1", ready: true})
	k.pod(ns, "b", podSpec{labels: map[string]string{"app.kubernetes.io/name": "bee"}, sa: "bsa", ip: "10.244.0.2"})
	svc := k.service(ns, "s", nil,
		tcpPort("http", 80, intstr.FromString("web")),
		tcpPort("metrics", 9090, intstr.FromInt32(9091)),
		corev1.ServicePort{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolUDP})
	k.slice(ns, "s-1", "s", []ep{{"a", "10.244.0.1"}, {"b", "10.244.0.2"}},
		slicePort("http", 8080, corev1.ProtocolTCP), slicePort("metrics", 9091, corev1.ProtocolTCP), slicePort("dns", 53, corev1.ProtocolUDP))

	binding := []*api.ServiceBinding{{Service: "s", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9090, TargetPort: 9091}}}}
	g.Eventually(workloadOf(st, ns+"/a"), waitLong).Should(equalProto(&api.Workload{
		Name: "a", Namespace: ns, Addresses: [][]byte{{10, 244, 0, 1}}, Node: "node1", Services: binding,
		CanonicalName: "a", CanonicalRevision: "v1",
	}))
	g.Eventually(workloadOf(st, ns+"/b"), waitLong).Should(equalProto(&api.Workload{
		Name: "b", Namespace: ns, Addresses: [][]byte{{10, 244, 0, 2}}, Node: "node1", ServiceAccount: "bsa", Services: binding,
		Status: api.WorkloadStatus_UNHEALTHY, CanonicalName: "bee",
	}))
	g.Eventually(serviceOf(st, ns+"/s"), waitLong).Should(equalProto(&api.Service{
		Name: "s", Namespace: ns, Addresses: [][]byte{ipBytes(svc.Spec.ClusterIP)},
		Ports: []*api.ServicePort{{Port: 80}, {Port: 9090, TargetPort: 9091}},
	}))

	// Enrollment: the namespace label off -> plaintext; the pod's own label -> HBONE; Istio's labels.
	k.labelNamespace(ns, map[string]*string{LabelDataplane: nil})
	tunnel := func(key string) func() api.TunnelProtocol {
		return func() api.TunnelProtocol { return workloadOf(st, key)().GetTunnel() }
	}
	g.Eventually(tunnel(ns+"/a"), waitLong).Should(Equal(api.TunnelProtocol_NONE))
	g.Eventually(tunnel(ns+"/b"), waitLong).Should(Equal(api.TunnelProtocol_NONE))
	k.relabelPod(ns, "a", map[string]*string{LabelDataplane: new("enabled")})
	g.Eventually(tunnel(ns+"/a"), waitLong).Should(Equal(api.TunnelProtocol_HBONE))
	k.labelNamespace(ns, map[string]*string{LabelIstioDataplaneMode: new("ambient")})
	g.Eventually(tunnel(ns+"/b"), waitLong).Should(Equal(api.TunnelProtocol_HBONE))
	k.relabelPod(ns, "b", map[string]*string{LabelIstioDataplaneMode: new("none")})
	g.Eventually(tunnel(ns+"/b"), waitLong).Should(Equal(api.TunnelProtocol_NONE))

	// Readiness flips the status.
	pod, err := k.cs.CoreV1().Pods(ns).Get(ctxT(), "b", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	_, err = k.cs.CoreV1().Pods(ns).UpdateStatus(ctxT(), pod, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() api.WorkloadStatus { return workloadOf(st, ns+"/b")().GetStatus() }, waitLong).Should(Equal(api.WorkloadStatus_HEALTHY))

	// Deletions: the pod, the slice (bindings go), the service.
	k.deletePod(ns, "b")
	g.Eventually(workloadOf(st, ns+"/b"), waitLong).Should(BeNil())
	g.Expect(k.cs.DiscoveryV1().EndpointSlices(ns).Delete(ctxT(), "s-1", metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(func() int { return len(workloadOf(st, ns+"/a")().GetServices()) }, waitLong).Should(Equal(0))
	g.Expect(k.cs.CoreV1().Services(ns).Delete(ctxT(), "s", metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(serviceOf(st, ns+"/s"), waitLong).Should(BeNil())
}

func ipBytes(s string) []byte {
	ip, err := parseCIDR(s)
	if err != nil {
		panic(err)
	}
	return ip.GetAddress()
}

// TestKubeWaypoints: use-waypoint labels on pods, services and namespaces resolve to existing waypoints
// (Waypoint or Gateway) whose "for" covers the kind of traffic; a waypoint subscriber gets only its scope.
func TestKubeWaypoints(t *testing.T) {
	g := NewWithT(t)
	k := startKube(t)
	_, node := k.client(nodeSub, nodeToken)

	ns := k.namespace("wp", map[string]string{LabelDataplane: "enabled"})
	auth := k.srv.opts.Authenticator.(fakeAuth)
	auth["wp-"+ns] = Caller{Namespace: ns, ServiceAccount: "wp"}
	auth["gw-"+ns] = Caller{Namespace: ns, ServiceAccount: "gw"}

	k.create("waypoints", waypointObj(ns, "wp", "service"))
	k.create("gateways", gatewayObj(ns, "gw", map[string]any{AnnotationWaypointFor: "workload"}))
	// The waypoint's own pod: not captured, but reached over HBONE; never sent through a waypoint.
	k.pod(ns, "wp-0", podSpec{labels: map[string]string{LabelWaypoint: "wp", LabelDataplane: "disabled", LabelUseWaypoint: "wp"}, sa: "wp", ip: "10.244.1.1", ready: true})
	k.pod(ns, "p1", podSpec{labels: map[string]string{LabelUseWaypoint: "gw"}, ip: "10.244.1.2", ready: true})
	k.pod(ns, "p2", podSpec{labels: map[string]string{LabelIstioUseWaypoint: "wp"}, ip: "10.244.1.3", ready: true})
	k.pod(ns, "p3", podSpec{ip: "10.244.1.4", ready: true})
	k.service(ns, "s1", map[string]string{LabelUseWaypoint: "wp"}, tcpPort("http", 80, intstr.FromInt32(8080)))
	k.service(ns, "s2", map[string]string{LabelUseWaypoint: "gw"}, tcpPort("http", 80, intstr.FromInt32(8080)))
	k.slice(ns, "s1-1", "s1", []ep{{"p3", "10.244.1.4"}}, slicePort("http", 8080, corev1.ProtocolTCP))

	waypointOf := func(key string) func() string { return func() string { return workloadOf(node, key)().GetWaypoint() } }
	g.Eventually(workloadOf(node, ns+"/wp-0"), waitLong).ShouldNot(BeNil())
	g.Expect(workloadOf(node, ns+"/wp-0")().GetTunnel()).To(Equal(api.TunnelProtocol_HBONE))
	g.Expect(workloadOf(node, ns+"/wp-0")().GetWaypoint()).To(BeEmpty())
	g.Eventually(waypointOf(ns+"/p1"), waitLong).Should(Equal("gw"))                                               // gw is for workloads
	g.Consistently(waypointOf(ns+"/p2"), 200*time.Millisecond).Should(BeEmpty())                                   // wp is for services only
	g.Eventually(func() string { return serviceOf(node, ns+"/s1")().GetWaypoint() }, waitLong).Should(Equal("wp")) // wp is for services
	g.Expect(serviceOf(node, ns+"/s2")().GetWaypoint()).To(BeEmpty())                                              // gw is not

	// The waypoint subscriber of wp gets s1 and its endpoint p3, nothing else.
	_, wpStore := k.client(NodeInfo{Role: RoleWaypoint, Namespace: ns, Waypoint: "wp"}, "wp-"+ns)
	g.Eventually(func() [3]int { return countsOf(wpStore) }, waitLong).Should(Equal([3]int{1, 1, 0}))
	g.Expect(wpStore.Load().Workload(ns + "/p3")).NotTo(BeNil())
	g.Expect(wpStore.Load().Service(ns + "/s1")).NotTo(BeNil())
	_, gwStore := k.client(NodeInfo{Role: RoleWaypoint, Namespace: ns, Waypoint: "gw"}, "gw-"+ns)
	g.Eventually(func() [3]int { return countsOf(gwStore) }, waitLong).Should(Equal([3]int{1, 0, 0}))
	g.Expect(gwStore.Load().Workload(ns + "/p1")).NotTo(BeNil())

	// The namespace label sends the pods without their own label to gw.
	k.labelNamespace(ns, map[string]*string{LabelUseWaypoint: new("gw")})
	g.Eventually(waypointOf(ns+"/p3"), waitLong).Should(Equal("gw"))
	g.Eventually(func() [3]int { return countsOf(gwStore) }, waitLong).Should(Equal([3]int{2, 0, 0}))

	// wp becomes a waypoint for all traffic: p2 (Istio's label) now uses it.
	u, err := k.dyn.Resource(gvrWaypoints).Namespace(ns).Get(ctxT(), "wp", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	u.Object["spec"].(map[string]any)["for"] = "all"
	_, err = k.dyn.Resource(gvrWaypoints).Namespace(ns).Update(ctxT(), u, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(waypointOf(ns+"/p2"), waitLong).Should(Equal("wp"))
	g.Eventually(func() bool { return wpStore.Load().Workload(ns+"/p2") != nil }, waitLong).Should(BeTrue())

	// The Gateway goes: p1 and p3 lose their waypoint, and gw's subscriber its workloads.
	g.Expect(k.dyn.Resource(gvrGateways).Namespace(ns).Delete(ctxT(), "gw", metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(waypointOf(ns+"/p1"), waitLong).Should(BeEmpty())
	g.Eventually(waypointOf(ns+"/p3"), waitLong).Should(BeEmpty())
	g.Eventually(func() [3]int { return countsOf(gwStore) }, waitLong).Should(Equal([3]int{0, 0, 0}))
	// p3 still reaches wp's subscriber as an endpoint of s1.
	g.Expect(wpStore.Load().Workload(ns + "/p3")).NotTo(BeNil())
}

// TestKubeAuthorizationPolicies: Istio policies become compact policies with the right scope and audience,
// selector policies are listed on the pods they select, service policies on their services, and L7-only
// content is reported.
func TestKubeAuthorizationPolicies(t *testing.T) {
	g := NewWithT(t)
	k := startKube(t)
	_, node := k.client(nodeSub, nodeToken)
	ns := k.namespace("ap", map[string]string{LabelDataplane: "enabled"})
	other := k.namespace("ap-other", nil)
	auth := k.srv.opts.Authenticator.(fakeAuth)
	auth["wp-"+ns] = Caller{Namespace: ns, ServiceAccount: "wp"}
	k.create("waypoints", waypointObj(ns, "wp", "service"))
	k.pod(ns, "web", podSpec{labels: map[string]string{"app": "web"}, ip: "10.244.2.1", ready: true})
	k.pod(other, "db", podSpec{labels: map[string]string{"app": "web"}, ip: "10.244.2.2", ready: true})
	k.service(ns, "api", map[string]string{LabelUseWaypoint: "wp"}, tcpPort("http", 80, intstr.FromInt32(8080)))
	_, wp := k.client(NodeInfo{Role: RoleWaypoint, Namespace: ns, Waypoint: "wp"}, "wp-"+ns)

	from := map[string]any{"from": []any{map[string]any{"source": map[string]any{"namespaces": []any{"frontend"}}}}}
	k.create("authorizationpolicies", policyObj(ns, "ns-wide", map[string]any{"rules": []any{from}}))
	k.create("authorizationpolicies", policyObj(ns, "sel", map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}}, "action": "DENY", "rules": []any{from}}))
	k.create("authorizationpolicies", policyObj(testMeshNS, "mesh-sel", map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}}, "rules": []any{from}}))
	k.create("authorizationpolicies", policyObj(ns, "to-api", map[string]any{"targetRefs": []any{map[string]any{"kind": "Service", "name": "api"}}, "rules": []any{from}}))
	k.create("authorizationpolicies", policyObj(ns, "to-wp", map[string]any{"targetRefs": []any{map[string]any{"group": "ambient.dev", "kind": "Waypoint", "name": "wp"}}, "action": "DENY", "rules": []any{from}}))
	issuesBefore := testutil.ToFloat64(k.m.policyIssues.WithLabelValues(ReasonL7AllowRuleDropped))
	k.create("authorizationpolicies", policyObj(ns, "l7", map[string]any{"rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"GET"}}}}}}}))

	g.Eventually(policyNames(node), waitLong).Should(ContainElements(ns+"/ns-wide", ns+"/sel", testMeshNS+"/mesh-sel", ns+"/l7"))
	g.Expect(policyNames(node)()).NotTo(ContainElements(ns+"/to-api", ns+"/to-wp"))
	g.Expect(node.Load().Policies().Get(testMeshNS + "/mesh-sel").Scope()).To(Equal(api.Scope_WORKLOAD_SELECTOR))
	g.Expect(node.Load().Policies().Get(ns + "/ns-wide").Scope()).To(Equal(api.Scope_NAMESPACE))
	g.Eventually(func() []string { return workloadOf(node, ns+"/web")().GetAuthorizationPolicies() }, waitLong).
		Should(Equal([]string{testMeshNS + "/mesh-sel", "sel"}))
	g.Eventually(func() []string { return workloadOf(node, other+"/db")().GetAuthorizationPolicies() }, waitLong).
		Should(Equal([]string{testMeshNS + "/mesh-sel"}))
	g.Eventually(func() []string { return serviceOf(node, ns+"/api")().GetAuthorizationPolicies() }, waitLong).Should(Equal([]string{"to-api"}))
	g.Eventually(policyNames(wp), waitLong).Should(ConsistOf(ns+"/to-api", ns+"/to-wp"))
	g.Eventually(func() float64 { return testutil.ToFloat64(k.m.policyIssues.WithLabelValues(ReasonL7AllowRuleDropped)) }, waitLong).
		Should(Equal(issuesBefore + 1))
	g.Expect(node.Load().Policies().Get(ns + "/l7").Action()).To(Equal(api.Action_ALLOW)) // and it has no rules: denies

	// The pod stops matching the selector; the mesh-wide policy goes.
	k.relabelPod(ns, "web", map[string]*string{"app": new("other")})
	g.Eventually(func() []string { return workloadOf(node, ns+"/web")().GetAuthorizationPolicies() }, waitLong).Should(BeEmpty())
	g.Expect(k.dyn.Resource(gvrPolicies).Namespace(testMeshNS).Delete(ctxT(), "mesh-sel", metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(func() []string { return workloadOf(node, other+"/db")().GetAuthorizationPolicies() }, waitLong).Should(BeEmpty())
	g.Eventually(policyNames(node), waitLong).ShouldNot(ContainElement(testMeshNS + "/mesh-sel"))
	// The service leaves the waypoint: its policy leaves the waypoint's scope.
	svc, err := k.cs.CoreV1().Services(ns).Get(ctxT(), "api", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	delete(svc.Labels, LabelUseWaypoint)
	_, err = k.cs.CoreV1().Services(ns).Update(ctxT(), svc, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(policyNames(wp), waitLong).Should(ConsistOf(ns + "/to-wp"))
}

// TestKubeCRDLifecycle: the AuthorizationPolicy informer stops when its CRD is deleted (the policies are
// removed from subscribers) and starts again when the CRD is installed.
func TestKubeCRDLifecycle(t *testing.T) {
	g := NewWithT(t)
	k := startKube(t)
	_, node := k.client(nodeSub, nodeToken)
	ns := k.namespace("crd", nil)
	k.create("authorizationpolicies", policyObj(ns, "before", map[string]any{"rules": []any{map[string]any{}}}))
	g.Eventually(policyNames(node), waitLong).Should(ContainElement(ns + "/before"))

	crdFile := filepath.Join(kubetest.RepoRoot(), "config", "crd", "external", "security.istio.io_authorizationpolicies.yaml")
	raw, err := os.ReadFile(crdFile) // #nosec G304 -- test data of the repository
	g.Expect(err).NotTo(HaveOccurred())
	crd := &unstructured.Unstructured{}
	g.Expect(yaml.Unmarshal(raw, &crd.Object)).To(Succeed())
	crds := k.dyn.Resource(gvrCRDs)
	restore := func() {
		_, err := crds.Create(ctxT(), crd, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Errorf("restore the AuthorizationPolicy CRD: %v", err)
			return
		}
		g.Eventually(func() bool {
			u, err := crds.Get(ctxT(), crd.GetName(), metav1.GetOptions{})
			return err == nil && crdServes(u, "v1")
		}, waitLong).Should(BeTrue())
	}
	t.Cleanup(restore)

	g.Expect(crds.Delete(ctxT(), crd.GetName(), metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(func() bool {
		_, err := crds.Get(ctxT(), crd.GetName(), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, 30*time.Second).Should(BeTrue())
	g.Eventually(policyNames(node), waitLong).ShouldNot(ContainElement(ns + "/before"))

	restore()
	g.Eventually(func() error {
		_, err := k.dyn.Resource(gvrPolicies).Namespace(ns).Create(ctxT(), &unstructured.Unstructured{Object: policyObj(ns, "after", map[string]any{"rules": []any{map[string]any{}}})}, metav1.CreateOptions{})
		return err
	}, waitLong).Should(Succeed())
	g.Eventually(policyNames(node), waitLong).Should(ContainElement(ns + "/after"))
}
