package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// kube is a running translator and xDS server over the shared API server.
type kube struct {
	t   *testing.T
	cs  kubernetes.Interface
	dyn dynamic.Interface
	srv *Server
	h   *grpcHarness
	tr  *Translator
	m   *Metrics
}

// startKube starts a Translator feeding a Server, served over gRPC.
func startKube(t *testing.T) *kube {
	t.Helper()
	env := kubeEnv(t)
	k := &kube{t: t, cs: kubernetes.NewForConfigOrDie(env.Config), dyn: dynamic.NewForConfigOrDie(env.Config)}
	_, err := k.cs.CoreV1().Namespaces().Create(ctxT(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testMeshNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if k.m, err = NewMetrics(nil); err != nil {
		t.Fatal(err)
	}
	if k.srv, err = NewServer(ServerOptions{Authenticator: testAuth(), MeshNamespace: testMeshNS, Logger: testLogger(t), Metrics: k.m}); err != nil {
		t.Fatal(err)
	}
	k.h = serve(t, k.srv, newPKI(t, serverID()), "127.0.0.1:0")
	def, _ := labels.Parse(DefaultEnrollmentSelector)
	k.tr, err = NewTranslator(TranslatorOptions{
		Client: k.cs, Dynamic: k.dyn, MeshNamespace: testMeshNS, NamespaceSelector: def, PodSelector: def,
		AcceptIstioLabels: true, Debounce: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond,
		Sink: k.srv, Logger: testLogger(t), Metrics: k.m,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := k.tr.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("translator: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	NewWithT(t).Eventually(k.tr.Ready, 20*time.Second).Should(BeTrue())
	return k
}

func (k *kube) client(node NodeInfo, token string) (*xdsclient.Client, *state.Store) {
	c, st := startClient(k.t, k.h, node, token, testLogger(k.t))
	NewWithT(k.t).Eventually(c.Synced(), 10*time.Second).Should(BeClosed())
	return c, st
}

func ctxT() context.Context { return context.Background() }

func (k *kube) namespace(prefix string, l map[string]string) string {
	name := fmt.Sprintf("%s-%d", prefix, rand.IntN(1<<30)) // #nosec G404 -- test names
	_, err := k.cs.CoreV1().Namespaces().Create(ctxT(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	return name
}

func (k *kube) labelNamespace(name string, l map[string]*string) {
	ns, err := k.cs.CoreV1().Namespaces().Get(ctxT(), name, metav1.GetOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	for key, v := range l {
		if v == nil {
			delete(ns.Labels, key)
		} else {
			ns.Labels[key] = *v
		}
	}
	if _, err := k.cs.CoreV1().Namespaces().Update(ctxT(), ns, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

type podSpec struct {
	labels map[string]string
	sa     string
	ip     string
	ready  bool
}

func (k *kube) pod(ns, name string, p podSpec) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: p.labels},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: p.sa,
			Containers: []corev1.Container{{Name: "c", Image: "example"}}},
	}
	created, err := k.cs.CoreV1().Pods(ns).Create(ctxT(), pod, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	cond := corev1.ConditionFalse
	if p.ready {
		cond = corev1.ConditionTrue
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}}
	if _, err := k.cs.CoreV1().Pods(ns).UpdateStatus(ctxT(), created, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) relabelPod(ns, name string, l map[string]*string) {
	pod, err := k.cs.CoreV1().Pods(ns).Get(ctxT(), name, metav1.GetOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	for key, v := range l {
		if v == nil {
			delete(pod.Labels, key)
		} else {
			pod.Labels[key] = *v
		}
	}
	if _, err := k.cs.CoreV1().Pods(ns).Update(ctxT(), pod, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) deletePod(ns, name string) {
	if err := k.cs.CoreV1().Pods(ns).Delete(ctxT(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) service(ns, name string, l map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	svc, err := k.cs.CoreV1().Services(ns).Create(ctxT(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: l},
		Spec:       corev1.ServiceSpec{Ports: ports},
	}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	return svc
}

type ep struct{ pod, ip string }

func (k *kube) slice(ns, name, svc string, eps []ep, ports ...discoveryv1.EndpointPort) {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.ip}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: e.pod, Namespace: ns}})
	}
	if _, err := k.cs.DiscoveryV1().EndpointSlices(ns).Create(ctxT(), es, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) create(gvrRes string, obj map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: obj}
	var res dynamic.ResourceInterface
	switch gvrRes {
	case "waypoints":
		res = k.dyn.Resource(gvrWaypoints).Namespace(u.GetNamespace())
	case "gateways":
		res = k.dyn.Resource(gvrGateways).Namespace(u.GetNamespace())
	case "authorizationpolicies":
		res = k.dyn.Resource(gvrPolicies).Namespace(u.GetNamespace())
	}
	out, err := res.Create(ctxT(), u, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

func waypointObj(ns, name, forWhat string) map[string]any {
	return map[string]any{
		"apiVersion": "ambient.dev/v1alpha1", "kind": "Waypoint",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     map[string]any{"for": forWhat},
	}
}

func gatewayObj(ns, name string, annotations map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": name, "namespace": ns, "annotations": annotations},
		"spec": map[string]any{
			"gatewayClassName": WaypointGatewayClass,
			"listeners":        []any{map[string]any{"name": "mesh", "port": int64(15008), "protocol": "HBONE"}},
		},
	}
}

func policyObj(ns, name string, spec map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}
}

func tcpPort(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
}

func slicePort(name string, port int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto}
}
