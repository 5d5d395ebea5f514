package xds

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Labels and values of the mesh's contract with users and with the operator (api/v1alpha1/labels.go and
// controllers/render of the operator module, copied: the data plane does not import the operator).
const (
	LabelDataplane          = "ambient.dev/dataplane"
	LabelIstioDataplaneMode = "istio.io/dataplane-mode"
	LabelUseWaypoint        = "ambient.dev/use-waypoint"
	LabelIstioUseWaypoint   = "istio.io/use-waypoint"
	LabelWaypoint           = "ambient.dev/waypoint"
	AnnotationWaypointFor   = "ambient.dev/waypoint-for"
	LabelIstioWaypointFor   = "istio.io/waypoint-for"
	WaypointGatewayClass    = "ambient-waypoint"
	// DefaultEnrollmentSelector is the default of both enrollment selectors.
	DefaultEnrollmentSelector = LabelDataplane + "=enabled"

	valueDisabled  = "disabled"
	valueIstioNone = "none"
	valueAmbient   = "ambient"
	noWaypoint     = "none"
	labelSvcName   = discoveryv1.LabelServiceName
)

// Waypoint "for" values.
const (
	forService  = "service"
	forWorkload = "workload"
	forAll      = "all"
)

// waypointInfo is what the translation needs to know about a waypoint.
type waypointInfo struct {
	forWorkloads, forServices bool
	// serviceAccount scopes the waypoint to workloads of that service account; empty: any.
	serviceAccount string
}

// waypointFromWaypoint reads an ambient.dev Waypoint.
func waypointFromWaypoint(u *unstructured.Unstructured) waypointInfo {
	f, _, _ := unstructured.NestedString(u.Object, "spec", "for")
	sa, _, _ := unstructured.NestedString(u.Object, "spec", "serviceAccount")
	w := waypointFor(f)
	w.serviceAccount = sa
	return w
}

// waypointFromGateway reads a Gateway; ok is false unless its class is ambient-waypoint. Like the
// operator, the label istio.io/waypoint-for wins over the annotation ambient.dev/waypoint-for when both
// are valid.
func waypointFromGateway(u *unstructured.Unstructured) (waypointInfo, bool) {
	class, _, _ := unstructured.NestedString(u.Object, "spec", "gatewayClassName")
	if class != WaypointGatewayClass {
		return waypointInfo{}, false
	}
	f := forService
	for _, v := range []string{u.GetAnnotations()[AnnotationWaypointFor], u.GetLabels()[LabelIstioWaypointFor]} {
		switch v {
		case forService, forWorkload, forAll:
			f = v
		}
	}
	return waypointFor(f), true
}

func waypointFor(f string) waypointInfo {
	switch f {
	case forWorkload:
		return waypointInfo{forWorkloads: true}
	case forAll:
		return waypointInfo{forWorkloads: true, forServices: true}
	default:
		return waypointInfo{forServices: true}
	}
}

// useWaypoint reads the waypoint a set of labels asks for: set is false when no label is there, name is
// "" for "none".
func useWaypoint(l map[string]string, acceptIstio bool) (name string, set bool) {
	v, ok := l[LabelUseWaypoint]
	if !ok && acceptIstio {
		v, ok = l[LabelIstioUseWaypoint]
	}
	if !ok {
		return "", false
	}
	if v == noWaypoint || strings.Contains(v, "/") {
		return "", true
	}
	return v, true
}

// enrollment decides which pods are in the mesh.
type enrollment struct {
	namespaces, pods labels.Selector
	acceptIstio      bool
}

// enrolled reports whether a pod is in the mesh: its namespace matches the namespace selector or the pod
// matches the pod selector (or Istio's dataplane-mode=ambient when accepted), unless the pod opts out.
func (e enrollment) enrolled(ns *corev1.Namespace, pod *corev1.Pod) bool {
	l := pod.Labels
	if l[LabelDataplane] == valueDisabled || l[LabelIstioDataplaneMode] == valueIstioNone {
		return false
	}
	if e.pods.Matches(labels.Set(l)) || (e.acceptIstio && l[LabelIstioDataplaneMode] == valueAmbient) {
		return true
	}
	if ns == nil {
		return false
	}
	return e.namespaces.Matches(labels.Set(ns.Labels)) || (e.acceptIstio && ns.Labels[LabelIstioDataplaneMode] == valueAmbient)
}

// namespaceSignature is what of a namespace matters to the translation: a change of anything else is
// ignored.
func (e enrollment) namespaceSignature(ns *corev1.Namespace) string {
	w, set := useWaypoint(ns.Labels, e.acceptIstio)
	s := "-"
	if e.namespaces.Matches(labels.Set(ns.Labels)) || (e.acceptIstio && ns.Labels[LabelIstioDataplaneMode] == valueAmbient) {
		s = "+"
	}
	if set {
		s += "w:" + w
	}
	return s
}

// usable reports whether a pod has a workload: it is scheduled or has an address, and is not finished.
// A scheduled pod is sent before it has an address so that its node knows whether to capture it when the
// CNI plugin reports its sandbox, before its containers start. Host-network pods share the node's address
// and are not mesh workloads.
func usable(pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	return pod.Spec.NodeName != "" || pod.Status.PodIP != "" || len(pod.Status.PodIPs) > 0
}

func podAddresses(pod *corev1.Pod) [][]byte {
	var out [][]byte
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		b := a.Unmap().AsSlice()
		for _, o := range out {
			if slices.Equal(o, b) {
				return
			}
		}
		out = append(out, b)
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if len(out) == 0 {
		add(pod.Status.PodIP)
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func firstLabel(l map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := l[k]; v != "" {
			return v
		}
	}
	return ""
}

// serviceAddresses returns the cluster IPs of a service; none for a headless or ExternalName service.
func serviceAddresses(svc *corev1.Service) [][]byte {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out [][]byte
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a.Unmap().AsSlice())
		}
	}
	return out
}

func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

// servicePorts returns the TCP ports of a service, with the target port when it is a number other than
// the port.
func servicePorts(svc *corev1.Service) []*api.ServicePort {
	var out []*api.ServicePort
	for _, p := range svc.Spec.Ports {
		if !isTCP(p.Protocol) || p.Port <= 0 {
			continue
		}
		sp := &api.ServicePort{Port: uint32(p.Port)} // #nosec G115 -- checked positive, at most 65535
		if tp := p.TargetPort.IntValue(); tp > 0 && tp <= 65535 && tp != int(p.Port) && p.TargetPort.StrVal == "" {
			sp.TargetPort = uint32(tp) // #nosec G115 -- checked range
		}
		out = append(out, sp)
	}
	return out
}

// slicePods returns the keys of the pods an EndpointSlice's endpoints point to.
func slicePods(es *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, ep := range es.Endpoints {
		r := ep.TargetRef
		if r == nil || r.Kind != "Pod" || r.Name == "" || (r.Namespace != "" && r.Namespace != es.Namespace) {
			continue
		}
		out = append(out, es.Namespace+"/"+r.Name)
	}
	return out
}

// slicePortMappings maps a slice's TCP ports to the service's ports by name: the endpoint port is the
// pod's port (named target ports resolved by the EndpointSlice controller).
func slicePortMappings(es *discoveryv1.EndpointSlice, svc *corev1.Service) []*api.PortMapping {
	var out []*api.PortMapping
	for _, p := range es.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 || (p.Protocol != nil && !isTCP(*p.Protocol)) {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Name != name || !isTCP(sp.Protocol) || sp.Port <= 0 {
				continue
			}
			pm := &api.PortMapping{ServicePort: uint32(sp.Port)} // #nosec G115 -- checked positive
			if *p.Port != sp.Port {
				pm.TargetPort = uint32(*p.Port) // #nosec G115 -- checked range
			}
			out = append(out, pm)
		}
	}
	return out
}

// stripPod keeps what the translation reads of a pod, so that the cache of a large cluster stays small.
func stripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: pod.Labels, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName, HostNetwork: pod.Spec.HostNetwork},
		Status: corev1.PodStatus{
			Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs,
		},
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return out, nil
}

// stripMeta drops managed fields and the last-applied annotation, the bulk of most objects' metadata.
func stripMeta(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		if a := m.GetAnnotations(); a[corev1.LastAppliedConfigAnnotation] != "" {
			a = maps.Clone(a)
			delete(a, corev1.LastAppliedConfigAnnotation)
			m.SetAnnotations(a)
		}
	}
	return obj, nil
}
