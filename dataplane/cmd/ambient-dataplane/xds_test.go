//go:build !proxyonly

package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/kubetest"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/xds"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// TestXDSCommand runs `ambient-dataplane xds` against a real API server: it becomes ready once its
// informers synced and the CA Secret is loaded, serves a node proxy that authenticates with a real
// service-account token over TLS with the CA's serving certificate, and stops on cancellation.
func TestXDSCommand(t *testing.T) {
	g := NewWithT(t)
	fx := startControlPlaneFixture(t)
	stopped := false
	defer func() {
		if !stopped {
			fx.stop()
		}
	}()
	ctx := t.Context()
	_, err := fx.cs.CoreV1().ServiceAccounts(fixtureNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ambient-node"}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	tr, err := fx.cs.CoreV1().ServiceAccounts(fixtureNS).CreateToken(ctx, "ambient-node", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"ambient-ca"}},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	tokenFile := filepath.Join(t.TempDir(), "token")
	g.Expect(os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600)).To(Succeed())

	store := state.NewStore(fixtureTD)
	client, err := xdsclient.NewClient(xdsclient.ClientOptions{
		Address: "127.0.0.1:" + strconv.Itoa(fx.flags.grpcPort), Identity: "spiffe://" + fixtureTD + "/ns/" + fixtureNS + "/sa/ambient-xds",
		RootCertFile: fx.rootFile, TokenFile: tokenFile, Node: xdsclient.NodeInfo{Role: xdsclient.RoleNode, NodeName: "node1"},
		Store: store, Logger: logr.Discard(),
	})
	g.Expect(err).NotTo(HaveOccurred())
	clientCtx, stopClient := context.WithCancel(ctx)
	clientDone := make(chan error, 1)
	go func() { clientDone <- client.Run(clientCtx) }()
	g.Eventually(client.Synced(), 20*time.Second).Should(BeClosed())
	// The "kubernetes" Service of the default namespace is part of the state.
	g.Expect(store.Load().Service("default/kubernetes")).NotTo(BeNil())

	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(fx.flags.metricsPort) + "/metrics") // #nosec G107 -- test URL
	g.Expect(err).NotTo(HaveOccurred())
	_ = resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))

	fx.stop()
	stopped = true
	g.Eventually(client.Connected, 5*time.Second).Should(BeFalse())
	stopClient()
	g.Expect(<-clientDone).To(Succeed())
}

// controlPlaneFixture is a running `ambient-dataplane xds` against a real API server, with the mesh
// namespace, its CA Secret and the root certificate in a file.
type controlPlaneFixture struct {
	cs       *kubernetes.Clientset
	cfg      *rest.Config
	flags    *xdsFlags
	rootFile string
	stop     func()
}

const fixtureNS, fixtureTD = "ambient-system", "td.test"

func startControlPlaneFixture(t *testing.T) *controlPlaneFixture {
	t.Helper()
	g := NewWithT(t)
	env, err := kubetest.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx := t.Context()
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fixtureNS}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	rootPEM, keyPEM, err := ca.NewRoot(fixtureTD, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.CoreV1().Secrets(fixtureNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "ambient-ca-root", Namespace: fixtureNS}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: rootPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	g.Expect(os.WriteFile(rootFile, rootPEM, 0o600)).To(Succeed())
	f := &xdsFlags{ // #nosec G101 -- names of test objects, not credentials
		namespace: fixtureNS, trustDomain: fixtureTD, caSecret: "ambient-ca-root", workloadCertTTL: time.Hour, tokenAudience: "ambient-ca",
		grpcPort: freePort(t), metricsPort: freePort(t), readinessPort: freePort(t), logLevel: "error", acceptIstioLabels: true,
		namespaceSelector: xds.DefaultEnrollmentSelector, podSelector: xds.DefaultEnrollmentSelector,
		shutdownTimeout: 2 * time.Second, restConfig: env.Config,
	}
	fx := &controlPlaneFixture{cs: cs, cfg: env.Config, flags: f, rootFile: rootFile}
	fx.start(t)
	return fx
}

// start runs the xDS server until stop and waits until it is ready.
func (fx *controlPlaneFixture) start(t *testing.T) {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runXDS(runCtx, fx.flags) }()
	fx.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds: %v", err)
		}
	}
	waitStatus(t, "http://127.0.0.1:"+strconv.Itoa(fx.flags.readinessPort)+"/healthz/ready", http.StatusOK)
}

func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	NewWithT(t).Eventually(func() int {
		resp, err := http.Get(url) // #nosec G107 -- test URL
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}, 30*time.Second, 100*time.Millisecond).Should(Equal(want), url)
}

// runningPod creates a pod on node with the service account and marks it running and ready at ip.
func (fx *controlPlaneFixture) runningPod(t *testing.T, ns, name, sa, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	g := NewWithT(t)
	ctx := t.Context()
	_, err := fx.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := fx.cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "c", Image: "example.test/app"}}},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	pod, err = fx.cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	return pod
}

// tokenFile writes a token of the service account for the CA's audience, bound to pod, and returns its path.
func (fx *controlPlaneFixture) tokenFile(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	tr, err := fx.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(t.Context(), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"ambient-ca"},
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	p := filepath.Join(t.TempDir(), "token")
	NewWithT(t).Expect(os.WriteFile(p, []byte(tr.Status.Token), 0o600)).To(Succeed())
	return p
}

type runningProxy struct {
	admin, ready string
	stop         func()
}

// runProxy runs `ambient-dataplane <args>` in this process with free admin, metrics and readiness ports.
func runProxy(t *testing.T, args ...string) *runningProxy {
	t.Helper()
	admin, metrics, ready := freePort(t), freePort(t), freePort(t)
	args = append(args,
		"--admin-address=127.0.0.1:"+strconv.Itoa(admin), "--metrics-address=127.0.0.1:"+strconv.Itoa(metrics),
		"--readiness-address=127.0.0.1:"+strconv.Itoa(ready), "--log-level=error", "--drain-seconds=0")
	root := newRootCommand()
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	p := &runningProxy{admin: "http://127.0.0.1:" + strconv.Itoa(admin), ready: "http://127.0.0.1:" + strconv.Itoa(ready) + "/healthz/ready"}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%v: %v", args[0], err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("%v did not stop", args[0])
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

func (p *runningProxy) configDump(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(p.admin + "/config_dump") // #nosec G107 -- test URL
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestProxiesFromControlPlane starts a node proxy and a waypoint with only --xds-address (and the
// identity, root and token flags the operator renders): each subscribes, fetches the certificates it
// needs from the CA, and only then reports ready. When the xDS server goes away they stay ready with
// what they have, and pick up changes again once it is back.
func TestProxiesFromControlPlane(t *testing.T) {
	g := NewWithT(t)
	fx := startControlPlaneFixture(t)
	defer func() { fx.stop() }()
	ctx := t.Context()
	const appNS = "shop"
	_, err := fx.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: appNS, Labels: map[string]string{"ambient.dev/dataplane": "enabled"}}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	fx.runningPod(t, appNS, "cart-1", "cart", "node1", "127.0.0.41", nil)
	nodePod := fx.runningPod(t, fixtureNS, "ambient-node-abc", "ambient-node", "node1", "127.0.0.40", nil)
	wpPod := fx.runningPod(t, appNS, "shop-waypoint-1", "shop-waypoint", "node1", "127.0.0.42", map[string]string{xds.LabelWaypoint: "shop-waypoint"})

	xdsArgs := []string{"--xds-address=127.0.0.1:" + strconv.Itoa(fx.flags.grpcPort),
		"--xds-identity=spiffe://" + fixtureTD + "/ns/" + fixtureNS + "/sa/ambient-xds",
		"--root-cert=" + fx.rootFile, "--trust-domain=" + fixtureTD}
	node := runProxy(t, append([]string{"node", "--node-name=node1", "--token=" + fx.tokenFile(t, nodePod),
		"--outbound-port=" + strconv.Itoa(freePort(t)), "--inbound-plaintext-port=" + strconv.Itoa(freePort(t)),
		"--hbone-port=" + strconv.Itoa(freePort(t)), "--mark=0"}, xdsArgs...)...)
	waypoint := runProxy(t, append([]string{"waypoint", "--waypoint=shop-waypoint", "--namespace=" + appNS,
		"--listen-address=127.0.0.42:" + strconv.Itoa(freePort(t)), "--token=" + fx.tokenFile(t, wpPod), "--mark=0"}, xdsArgs...)...)

	// Ready means: the full state arrived and the certificate of every local workload was issued.
	waitStatus(t, node.ready, http.StatusOK)
	waitStatus(t, waypoint.ready, http.StatusOK)
	g.Expect(node.configDump(t)).To(ContainSubstring("127.0.0.41"))
	g.Expect(node.configDump(t)).To(ContainSubstring(`"nativeHbone": true`), "the waypoint pod is marked as terminating HBONE itself")

	// A dead xDS server does not take the proxies down: still ready, same state.
	fx.stop()
	time.Sleep(500 * time.Millisecond)
	waitStatus(t, node.ready, http.StatusOK)
	g.Expect(node.configDump(t)).To(ContainSubstring("127.0.0.41"))
	// A pod created meanwhile reaches the node proxy once the server is back.
	fx.runningPod(t, appNS, "cart-2", "cart", "node1", "127.0.0.43", nil)
	fx.start(t)
	g.Eventually(func() string { return node.configDump(t) }, 30*time.Second, 200*time.Millisecond).Should(ContainSubstring("127.0.0.43"))
	waitStatus(t, node.ready, http.StatusOK)
	node.stop()
	waypoint.stop()
}
