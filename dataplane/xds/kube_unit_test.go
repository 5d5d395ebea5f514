package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

func TestEnrolled(t *testing.T) {
	def, _ := labels.Parse(DefaultEnrollmentSelector)
	custom, _ := labels.Parse("team in (a,b)")
	nsWith := func(l map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Labels: l}}
	}
	podWith := func(l map[string]string) *corev1.Pod { return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: l}} }
	enabled := map[string]string{LabelDataplane: "enabled"}
	istio := map[string]string{LabelIstioDataplaneMode: "ambient"}
	for _, tc := range []struct {
		name        string
		nsSel       labels.Selector
		acceptIstio bool
		ns          *corev1.Namespace
		pod         *corev1.Pod
		want        bool
	}{
		{"namespace label", def, false, nsWith(enabled), podWith(nil), true},
		{"pod label", def, false, nsWith(nil), podWith(enabled), true},
		{"neither", def, false, nsWith(nil), podWith(map[string]string{"app": "x"}), false},
		{"pod opts out", def, false, nsWith(enabled), podWith(map[string]string{LabelDataplane: "disabled"}), false},
		{"istio opt-out", def, true, nsWith(enabled), podWith(map[string]string{LabelIstioDataplaneMode: "none"}), false},
		{"istio namespace accepted", def, true, nsWith(istio), podWith(nil), true},
		{"istio namespace not accepted", def, false, nsWith(istio), podWith(nil), false},
		{"istio pod accepted", def, true, nsWith(nil), podWith(istio), true},
		{"custom selector", custom, false, nsWith(map[string]string{"team": "b"}), podWith(nil), true},
		{"custom selector, default label", custom, false, nsWith(enabled), podWith(nil), false},
		{"everything", labels.Everything(), false, nsWith(nil), podWith(nil), true},
		{"namespace unknown", def, false, nil, podWith(nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := enrollment{namespaces: tc.nsSel, pods: def, acceptIstio: tc.acceptIstio}
			NewWithT(t).Expect(e.enrolled(tc.ns, tc.pod)).To(Equal(tc.want))
		})
	}
}

func TestUseWaypoint(t *testing.T) {
	for _, tc := range []struct {
		name        string
		labels      map[string]string
		acceptIstio bool
		want        string
		set         bool
	}{
		{"none", nil, true, "", false},
		{"ambient", map[string]string{LabelUseWaypoint: "wp"}, false, "wp", true},
		{"istio accepted", map[string]string{LabelIstioUseWaypoint: "wp"}, true, "wp", true},
		{"istio ignored", map[string]string{LabelIstioUseWaypoint: "wp"}, false, "", false},
		{"ambient wins", map[string]string{LabelUseWaypoint: "a", LabelIstioUseWaypoint: "b"}, true, "a", true},
		{"opt out", map[string]string{LabelUseWaypoint: "none"}, true, "", true},
		{"cross namespace unsupported", map[string]string{LabelUseWaypoint: "ns/wp"}, true, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, set := useWaypoint(tc.labels, tc.acceptIstio)
			g.Expect(got).To(Equal(tc.want))
			g.Expect(set).To(Equal(tc.set))
		})
	}
}

func TestWaypointObjects(t *testing.T) {
	g := NewWithT(t)
	wp := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"for": "workload", "serviceAccount": "sa"}}}
	g.Expect(waypointFromWaypoint(wp)).To(Equal(waypointInfo{forWorkloads: true, serviceAccount: "sa"}))
	g.Expect(waypointFromWaypoint(&unstructured.Unstructured{Object: map[string]any{}})).To(Equal(waypointInfo{forServices: true}))

	gw := func(class string, ann, lbl map[string]string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"gatewayClassName": class}}}
		u.SetAnnotations(ann)
		u.SetLabels(lbl)
		return u
	}
	_, ok := waypointFromGateway(gw("istio", nil, nil))
	g.Expect(ok).To(BeFalse())
	w, ok := waypointFromGateway(gw(WaypointGatewayClass, nil, nil))
	g.Expect(ok).To(BeTrue())
	g.Expect(w).To(Equal(waypointInfo{forServices: true}))
	w, _ = waypointFromGateway(gw(WaypointGatewayClass, map[string]string{AnnotationWaypointFor: "all"}, nil))
	g.Expect(w).To(Equal(waypointInfo{forServices: true, forWorkloads: true}))
	// As the operator: the label wins over the annotation when both are valid; an invalid one is ignored.
	w, _ = waypointFromGateway(gw(WaypointGatewayClass, map[string]string{AnnotationWaypointFor: "all"}, map[string]string{LabelIstioWaypointFor: "workload"}))
	g.Expect(w).To(Equal(waypointInfo{forWorkloads: true}))
	w, _ = waypointFromGateway(gw(WaypointGatewayClass, map[string]string{AnnotationWaypointFor: "all"}, map[string]string{LabelIstioWaypointFor: "bogus"}))
	g.Expect(w).To(Equal(waypointInfo{forServices: true, forWorkloads: true}))
}

func TestPortMappings(t *testing.T) {
	g := NewWithT(t)
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromString("web")},
		{Name: "grpc", Port: 9000, TargetPort: intstr.FromInt32(9000)},
		{Name: "admin", Port: 8000, TargetPort: intstr.FromInt32(8001)},
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
	}}}
	g.Expect(servicePorts(svc)).To(HaveExactElements(
		equalProto(&api.ServicePort{Port: 80}), equalProto(&api.ServicePort{Port: 9000}), equalProto(&api.ServicePort{Port: 8000, TargetPort: 8001})))
	name := func(s string) *string { return &s }
	port := func(p int32) *int32 { return &p }
	udp := corev1.ProtocolUDP
	es := &discoveryv1.EndpointSlice{Ports: []discoveryv1.EndpointPort{
		{Name: name("http"), Port: port(8080)}, {Name: name("grpc"), Port: port(9000)}, {Name: name("dns"), Port: port(53), Protocol: &udp},
		{Name: name("unknown"), Port: port(1)}, {Name: name("admin"), Port: nil},
	}}
	got := slicePortMappings(es, svc)
	g.Expect(got).To(HaveLen(2))
	g.Expect(proto.Equal(got[0], &api.PortMapping{ServicePort: 80, TargetPort: 8080})).To(BeTrue())
	g.Expect(proto.Equal(got[1], &api.PortMapping{ServicePort: 9000})).To(BeTrue())
}

func TestStripPodKeepsWhatTranslationReads(t *testing.T) {
	g := NewWithT(t)
	now := metav1.Now()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"a": "b"}, Annotations: map[string]string{"big": "x"},
			DeletionTimestamp: &now, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}}},
		Spec: corev1.PodSpec{NodeName: "n", ServiceAccountName: "sa", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue, Message: "m"}}},
	}
	o, err := stripPod(pod)
	g.Expect(err).NotTo(HaveOccurred())
	s := o.(*corev1.Pod)
	g.Expect(s.Annotations).To(BeNil())
	g.Expect(s.ManagedFields).To(BeNil())
	g.Expect(s.Spec.Containers).To(BeNil())
	g.Expect(s.Labels).To(Equal(pod.Labels))
	g.Expect(s.Status.Conditions).To(Equal([]corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}))
	g.Expect(usable(s)).To(BeTrue())
	g.Expect(podReady(s)).To(BeFalse()) // terminating
	g.Expect(podAddresses(s)).To(Equal([][]byte{{10, 0, 0, 1}}))
}

func TestUsable(t *testing.T) {
	g := NewWithT(t)
	ip := corev1.PodStatus{PodIP: "10.0.0.1", Phase: corev1.PodRunning}
	g.Expect(usable(&corev1.Pod{Status: ip})).To(BeTrue())
	g.Expect(usable(&corev1.Pod{})).To(BeFalse())
	g.Expect(usable(&corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1"}})).To(BeTrue(), "scheduled, no address yet: its node learns whether to capture it")
	g.Expect(usable(&corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true}, Status: ip})).To(BeFalse())
	done := ip
	done.Phase = corev1.PodSucceeded
	g.Expect(usable(&corev1.Pod{Status: done})).To(BeFalse())
}

func TestNodeInfoAndAuthorize(t *testing.T) {
	g := NewWithT(t)
	const mesh, nodeSA = "mesh", "ambient-node"
	for _, tc := range []struct {
		name string
		n    NodeInfo
		c    Caller
		ok   bool
	}{
		{"node proxy", NodeInfo{Role: RoleNode, NodeName: "n1"}, Caller{Namespace: mesh, ServiceAccount: nodeSA}, true},
		{"node proxy bound to its node", NodeInfo{Role: RoleNode, NodeName: "n1"}, Caller{Namespace: mesh, ServiceAccount: nodeSA, NodeName: "n1"}, true},
		{"node proxy of another node", NodeInfo{Role: RoleNode, NodeName: "n2"}, Caller{Namespace: mesh, ServiceAccount: nodeSA, NodeName: "n1"}, false},
		{"node account elsewhere", NodeInfo{Role: RoleNode, NodeName: "n1"}, Caller{Namespace: "app", ServiceAccount: nodeSA}, false},
		{"waypoint", NodeInfo{Role: RoleWaypoint, Namespace: "app", Waypoint: "wp"}, Caller{Namespace: "app", ServiceAccount: "wp"}, true},
		{"waypoint impostor", NodeInfo{Role: RoleWaypoint, Namespace: "app", Waypoint: "wp"}, Caller{Namespace: "app", ServiceAccount: "web"}, false},
		{"node proxy as waypoint", NodeInfo{Role: RoleWaypoint, Namespace: "app", Waypoint: "wp"}, Caller{Namespace: mesh, ServiceAccount: nodeSA}, false},
	} {
		err := authorize(tc.n, tc.c, mesh, nodeSA)
		g.Expect(err == nil).To(Equal(tc.ok), "%s: %v", tc.name, err)
		parsed, err := xdsclient.ParseNode(nodeWithMeta(tc.n))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(parsed).To(Equal(tc.n))
	}
}

func nodeWithMeta(n NodeInfo) *corev3.Node { return &corev3.Node{Metadata: n.Metadata()} }
