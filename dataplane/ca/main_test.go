package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	apiv1alpha1 "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/kubetest"
)

// The suite shares one API server (envtest) and one CA server behind a real gRPC TLS listener on
// 127.0.0.1. Tests that change the root run their own Server with their own Secret.
const (
	meshNS       = "ambient-system"
	appsNS       = "apps"
	td           = "cluster.local"
	caSecretName = "ambient-ca-root" // #nosec G101 -- the name of a Secret, not a credential
	nodeA        = "node-a"
	nodeB        = "node-b"
	audience     = "ambient-ca"
)

var (
	kube kubernetes.Interface
	fx   *fixture
)

// fixture is the shared CA server.
type fixture struct {
	srv      *Server
	rootPEM  []byte
	rootPool *x509.CertPool
	addr     string
	conn     *grpc.ClientConn // verifies the server like any TLS client, with the root and a DNS SAN
	rpcs     *rpcCounter
	// nodeProxyA and nodeProxyB are the node proxies' pods (service account ambient-node) on node-a and node-b.
	nodeProxyA, nodeProxyB *corev1.Pod
}

func TestMain(m *testing.M) {
	code := runSuite(m)
	if code == 0 {
		// No library goroutine needs ignoring: the teardown stops the informers, the gRPC servers and
		// connections and the API server (which closes client-go's connections).
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func runSuite(m *testing.M) int {
	env, err := kubetest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	cfg := *env.Config
	cfg.QPS, cfg.Burst = 200, 400 // tests create many objects quickly
	kube = kubernetes.NewForConfigOrDie(&cfg)
	stop, err := setUp()
	if err != nil {
		fmt.Fprintln(os.Stderr, "set up:", err)
		if stop != nil {
			stop()
		}
		return 1
	}
	defer stop()
	return m.Run()
}

func setUp() (func(), error) {
	ctx := context.Background()
	for _, ns := range []string{meshNS, appsNS} {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	rootPEM, keyPEM, err := NewRoot(td, 240*time.Hour)
	if err != nil {
		return nil, err
	}
	if err := putSecret(ctx, caSecretName, rootPEM, keyPEM); err != nil {
		return nil, err
	}
	f := &fixture{rootPEM: rootPEM, rootPool: x509.NewCertPool(), rpcs: &rpcCounter{byID: map[string]int{}}}
	f.rootPool.AppendCertsFromPEM(rootPEM)
	f.srv, err = NewServer(ServerConfig{
		Client: kube, Namespace: meshNS, TrustDomain: td, CASecret: caSecretName,
		ExtraSANs: []string{"ca.example.test", "192.0.2.10"}, Registerer: prometheus.NewRegistry(), Logger: logr.Discard(),
	})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- f.srv.Run(runCtx) }()
	gs, addr, err := serve(f.srv, "127.0.0.1:0", f.rpcs)
	if err != nil {
		cancel()
		return nil, err
	}
	f.addr = addr
	var closers []func()
	stop := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		gs.Stop()
		cancel()
		if err := <-runDone; err != nil {
			fmt.Fprintln(os.Stderr, "CA server:", err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !f.srv.Ready() {
		if time.Now().After(deadline) {
			return stop, errors.New("CA server not ready after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: f.rootPool, ServerName: "ambient-xds.ambient-system.svc",
	})))
	if err != nil {
		return stop, err
	}
	closers = append(closers, func() { _ = f.conn.Close() })
	if f.nodeProxyA, err = newPod(ctx, meshNS, "ambient-node-a", DefaultNodeServiceAccount, nodeA, nil); err != nil {
		return stop, err
	}
	if f.nodeProxyB, err = newPod(ctx, meshNS, "ambient-node-b", DefaultNodeServiceAccount, nodeB, nil); err != nil {
		return stop, err
	}
	fx = f
	return stop, nil
}

// serve starts a gRPC server with the CA's TLS configuration, counting calls per requested identity.
func serve(srv *Server, addr string, rpcs *rpcCounter) (*grpc.Server, string, error) {
	var lis net.Listener
	var err error
	for range 50 { // a restarted server binds the port its predecessor just released
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, "", err
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(srv.TLSConfig())), grpc.UnaryInterceptor(rpcs.intercept))
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	return gs, lis.Addr().String(), nil
}

// rpcCounter counts CreateCertificate calls by the identity in the CSR.
type rpcCounter struct {
	mu   sync.Mutex
	byID map[string]int
}

func (r *rpcCounter) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if cr, ok := req.(*apiv1alpha1.CertificateRequest); ok {
		if _, id, err := ParseCSR([]byte(cr.GetCsr())); err == nil {
			r.mu.Lock()
			r.byID[id.String()]++
			r.mu.Unlock()
		}
	}
	return handler(ctx, req)
}

func (r *rpcCounter) count(id identity.Identity) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id.String()]
}

func putSecret(ctx context.Context, name string, certPEM, keyPEM []byte) error {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshNS},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	_, err := kube.CoreV1().Secrets(meshNS).Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = kube.CoreV1().Secrets(meshNS).Update(ctx, s, metav1.UpdateOptions{})
	}
	return err
}

var podSeq atomic.Int64

// newPod creates a pod (and its service account) scheduled on a node; the name gets a unique suffix.
func newPod(ctx context.Context, ns, name, sa, node string, labels map[string]string) (*corev1.Pod, error) {
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-" + strconv.FormatInt(podSeq.Add(1), 10), Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "example.test/app"}},
		},
	}, metav1.CreateOptions{})
}

func mustPod(t *testing.T, ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	pod, err := newPod(t.Context(), ns, name, sa, node, labels)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// tokenFor requests a service-account token for the audience, bound to pod when it is not nil.
func tokenFor(t *testing.T, ns, sa string, pod *corev1.Pod, aud string) string {
	t.Helper()
	spec := authenticationv1.TokenRequestSpec{Audiences: []string{aud}}
	if pod != nil {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// podToken is a token bound to the pod, for the pod's service account and the CA's audience.
func podToken(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	return tokenFor(t, pod.Namespace, pod.Spec.ServiceAccountName, pod, audience)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// request calls CreateCertificate on a connection with a token ("" sends none).
func request(ctx context.Context, conn *grpc.ClientConn, token string, csrPEM []byte, validity time.Duration) (*apiv1alpha1.CertificateResponse, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return apiv1alpha1.NewCertificateServiceClient(conn).CreateCertificate(ctx, &apiv1alpha1.CertificateRequest{
		Csr: string(csrPEM), ValiditySeconds: int64(validity / time.Second),
	})
}

func mustCSR(t *testing.T, id identity.Identity) []byte {
	t.Helper()
	csr, _, err := caclient.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
