package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/kubetest"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/xds"
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
	env, err := kubetest.Start()
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = env.Stop() }()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx := context.Background()
	const ns, td = "ambient-system", "td.test"
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	rootPEM, keyPEM, err := ca.NewRoot(td, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "ambient-ca-root", Namespace: ns}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: rootPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ambient-node"}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ambient-node", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"ambient-ca"}},
	}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	f := &xdsFlags{ // #nosec G101 -- names of test objects, not credentials
		namespace: ns, trustDomain: td, caSecret: "ambient-ca-root", workloadCertTTL: time.Hour, tokenAudience: "ambient-ca",
		grpcPort: freePort(t), metricsPort: freePort(t), readinessPort: freePort(t), logLevel: "error", acceptIstioLabels: true,
		namespaceSelector: xds.DefaultEnrollmentSelector, podSelector: xds.DefaultEnrollmentSelector,
		shutdownTimeout: 2 * time.Second, restConfig: env.Config,
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runXDS(runCtx, f) }()
	readyURL := "http://127.0.0.1:" + strconv.Itoa(f.readinessPort) + "/healthz/ready"
	g.Eventually(func() int {
		resp, err := http.Get(readyURL) // #nosec G107 -- test URL
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}, 30*time.Second, 100*time.Millisecond).Should(Equal(http.StatusOK))

	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	g.Expect(os.WriteFile(rootFile, rootPEM, 0o600)).To(Succeed())
	g.Expect(os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600)).To(Succeed())
	store := state.NewStore(td)
	client, err := xds.NewClient(xds.ClientOptions{
		Address: "127.0.0.1:" + strconv.Itoa(f.grpcPort), Identity: "spiffe://" + td + "/ns/" + ns + "/sa/ambient-xds",
		RootCertFile: rootFile, TokenFile: tokenFile, Node: xds.NodeInfo{Role: xds.RoleNode, NodeName: "node1"},
		Store: store, Logger: logr.Discard(),
	})
	g.Expect(err).NotTo(HaveOccurred())
	clientCtx, stopClient := context.WithCancel(ctx)
	clientDone := make(chan error, 1)
	go func() { clientDone <- client.Run(clientCtx) }()
	g.Eventually(client.Synced(), 20*time.Second).Should(BeClosed())
	// The "kubernetes" Service of the default namespace is part of the state.
	g.Expect(store.Load().Service("default/kubernetes")).NotTo(BeNil())

	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(f.metricsPort) + "/metrics") // #nosec G107 -- test URL
	g.Expect(err).NotTo(HaveOccurred())
	_ = resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))

	cancel()
	g.Eventually(done, 15*time.Second).Should(Receive(BeNil()))
	g.Eventually(client.Connected, 5*time.Second).Should(BeFalse())
	stopClient()
	g.Expect(<-clientDone).To(Succeed())
}
