package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	apiv1alpha1 "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// chainOf decodes a response's chain for identity.VerifyChain.
func chainOf(g Gomega, resp *apiv1alpha1.CertificateResponse) ([][]byte, *x509.Certificate) {
	g.Expect(resp.GetCertChain()).NotTo(BeEmpty())
	var raw [][]byte
	for _, p := range resp.GetCertChain() {
		b, rest := pem.Decode([]byte(p))
		g.Expect(b).NotTo(BeNil())
		g.Expect(strings.TrimSpace(string(rest))).To(BeEmpty(), "one PEM certificate per chain element")
		raw = append(raw, b.Bytes)
	}
	leaf, err := x509.ParseCertificate(raw[0])
	g.Expect(err).NotTo(HaveOccurred())
	return raw, leaf
}

func poolOf(g Gomega, pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	g.Expect(p.AppendCertsFromPEM(pemData)).To(BeTrue())
	return p
}

func TestNodeProxyGetsCertificateForPodOnItsNode(t *testing.T) {
	g := NewWithT(t)
	web := mustPod(t, appsNS, "web", "web", nodeA, nil)
	id := identity.New(td, appsNS, "web")
	before := testutil.ToFloat64(fx.srv.issued)

	resp, err := request(t.Context(), fx.conn, podToken(t, fx.nodeProxyA), mustCSR(t, id), 0)
	g.Expect(err).NotTo(HaveOccurred())

	raw, leaf := chainOf(g, resp)
	for _, roots := range []*x509.CertPool{fx.rootPool, poolOf(g, []byte(resp.GetTrustBundle()))} {
		got, err := identity.VerifyChain(raw, roots, td, x509.ExtKeyUsageClientAuth)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(id))
		_, err = identity.VerifyChain(raw, roots, td, x509.ExtKeyUsageServerAuth)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(resp.GetTrustBundle()).To(Equal(string(fx.rootPEM)))
	g.Expect(leaf.NotAfter).To(BeTemporally("~", time.Now().Add(DefaultWorkloadTTL), time.Minute), "default TTL 24h")
	g.Expect(testutil.ToFloat64(fx.srv.issued)).To(Equal(before + 1))
	_ = web

	// The node proxy's own identity is that of a pod on its node too.
	_, err = request(t.Context(), fx.conn, podToken(t, fx.nodeProxyA), mustCSR(t, identity.New(td, meshNS, DefaultNodeServiceAccount)), 0)
	g.Expect(err).NotTo(HaveOccurred())
}

func TestWorkloadsGetTheirOwnIdentity(t *testing.T) {
	client := mustPod(t, appsNS, "client", "client", nodeA, nil)
	wp := mustPod(t, appsNS, "wp", "wp", nodeB, map[string]string{LabelWaypoint: "wp"})
	cases := []struct {
		name  string
		token string
		id    identity.Identity
	}{
		{"workload, token bound to its pod", podToken(t, client), identity.New(td, appsNS, "client")},
		{"workload, token not bound to a pod", tokenFor(t, appsNS, "client", nil, audience), identity.New(td, appsNS, "client")},
		{"waypoint", podToken(t, wp), identity.New(td, appsNS, "wp")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			resp, err := request(t.Context(), fx.conn, tc.token, mustCSR(t, tc.id), 0)
			g.Expect(err).NotTo(HaveOccurred())
			raw, _ := chainOf(g, resp)
			got, err := identity.VerifyChain(raw, fx.rootPool, td, x509.ExtKeyUsageClientAuth)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.id))
		})
	}
}

func TestRefusals(t *testing.T) {
	mustPod(t, appsNS, "web", "web", nodeA, nil)
	mustPod(t, appsNS, "db", "db", nodeB, nil)
	done := mustPod(t, appsNS, "job", "job", nodeA, nil)
	done.Status.Phase = corev1.PodSucceeded
	if _, err := kube.CoreV1().Pods(appsNS).UpdateStatus(t.Context(), done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() corev1.PodPhase {
		obj, _, _ := fx.srv.pods.GetIndexer().GetByKey(appsNS + "/" + done.Name)
		if pod, ok := obj.(*corev1.Pod); ok {
			return pod.Status.Phase
		}
		return ""
	}).Should(Equal(corev1.PodSucceeded), "the informer saw the pod terminate")
	client := mustPod(t, appsNS, "client", "client", nodeA, nil)
	waypoint := mustPod(t, appsNS, "wp", "wp", nodeA, map[string]string{LabelWaypoint: "wp"})
	// A waypoint pod running as the node service account gets no node-proxy rights.
	nodeWaypoint := mustPod(t, meshNS, "ambient-node-wp", DefaultNodeServiceAccount, nodeA, map[string]string{LabelWaypoint: "x"})

	nodeTok := podToken(t, fx.nodeProxyA)
	web, db := identity.New(td, appsNS, "web"), identity.New(td, appsNS, "db")

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	csrWith := func(key any, uris ...*url.URL) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris}, key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	garbage := "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x"}`)) + ".c2ln"

	cases := []struct {
		name     string
		token    string
		csr      []byte
		validity time.Duration
		code     codes.Code
		reason   string
		msg      string
	}{
		{"another node's pod", nodeTok, mustCSR(t, db), 0, codes.PermissionDenied, reasonNotOnNode, `no running pod with service account apps/db is scheduled on node "node-a"`},
		{"an identity with no pod anywhere", nodeTok, mustCSR(t, identity.New(td, appsNS, "ghost")), 0, codes.PermissionDenied, reasonNotOnNode, "apps/ghost"},
		{"a pod that has terminated", nodeTok, mustCSR(t, identity.New(td, appsNS, "job")), 0, codes.PermissionDenied, reasonNotOnNode, "apps/job"},
		{"a foreign trust domain", nodeTok, mustCSR(t, identity.New("example.org", appsNS, "web")), 0, codes.PermissionDenied, reasonForeignDomain, `not in the mesh's trust domain "cluster.local"`},
		{"a waypoint asking for another identity", podToken(t, waypoint), mustCSR(t, web), 0, codes.PermissionDenied, reasonNotOwnIdentity, "may only request its own identity spiffe://cluster.local/ns/apps/sa/wp"},
		{"a waypoint pod of the node service account", podToken(t, nodeWaypoint), mustCSR(t, web), 0, codes.PermissionDenied, reasonNotOwnIdentity, "may only request its own identity"},
		{"a workload asking for another identity", podToken(t, client), mustCSR(t, web), 0, codes.PermissionDenied, reasonNotOwnIdentity, "apps/client (pod apps/client-"},
		{"a token for another audience", tokenFor(t, appsNS, "client", client, "other"), mustCSR(t, identity.New(td, appsNS, "client")), 0, codes.Unauthenticated, reasonUnauthenticated, `audience "ambient-ca"`},
		{"a garbage token", garbage, mustCSR(t, web), 0, codes.Unauthenticated, reasonUnauthenticated, "token rejected"},
		{"no token", "", mustCSR(t, web), 0, codes.Unauthenticated, reasonUnauthenticated, "authorization: Bearer"},
		{"a node proxy token not bound to a pod", tokenFor(t, meshNS, DefaultNodeServiceAccount, nil, audience), mustCSR(t, web), 0, codes.PermissionDenied, reasonUnboundToken, "not bound to a pod"},
		{"a malformed CSR", nodeTok, []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 0, codes.InvalidArgument, reasonInvalidRequest, "invalid CSR"},
		{"not PEM", nodeTok, []byte("hello"), 0, codes.InvalidArgument, reasonInvalidRequest, "not a PEM CERTIFICATE REQUEST"},
		{"an RSA key", nodeTok, csrWith(rsaKey, web.URL()), 0, codes.InvalidArgument, reasonInvalidRequest, "key must be ECDSA P-256"},
		{"a P-384 key", nodeTok, csrWith(p384, web.URL()), 0, codes.InvalidArgument, reasonInvalidRequest, "key must be ECDSA P-256"},
		{"two SANs", nodeTok, csrWith(p256, web.URL(), db.URL()), 0, codes.InvalidArgument, reasonInvalidRequest, "exactly one URI SAN"},
		{"a SAN that is not a workload identity", nodeTok, csrWith(p256, &url.URL{Scheme: "spiffe", Host: td, Path: "/admin"}), 0, codes.InvalidArgument, reasonInvalidRequest, "want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"},
		{"a huge CSR", nodeTok, make([]byte, maxCSRBytes+1), 0, codes.InvalidArgument, reasonInvalidRequest, "larger than"},
		{"a negative validity", nodeTok, mustCSR(t, web), -time.Hour, codes.InvalidArgument, reasonInvalidRequest, "validity_seconds -3600 is negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			before := testutil.ToFloat64(fx.srv.refused.WithLabelValues(tc.reason))
			_, err := request(t.Context(), fx.conn, tc.token, tc.csr, tc.validity)
			g.Expect(status.Code(err)).To(Equal(tc.code), "%v", err)
			g.Expect(status.Convert(err).Message()).To(ContainSubstring(tc.msg))
			g.Expect(testutil.ToFloat64(fx.srv.refused.WithLabelValues(tc.reason))).To(Equal(before + 1))
		})
	}
}

func TestTTL(t *testing.T) {
	mustPod(t, appsNS, "ttl", "ttl", nodeA, nil)
	tok := podToken(t, fx.nodeProxyA)
	id := identity.New(td, appsNS, "ttl")
	cases := []struct {
		name     string
		validity time.Duration
		want     time.Duration
	}{
		{"unset means the configured TTL", 0, DefaultWorkloadTTL},
		{"a shorter validity is honoured", 10 * time.Minute, 10 * time.Minute},
		{"a longer validity is capped", 100 * time.Hour, DefaultWorkloadTTL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			resp, err := request(t.Context(), fx.conn, tok, mustCSR(t, id), tc.validity)
			g.Expect(err).NotTo(HaveOccurred())
			_, leaf := chainOf(g, resp)
			g.Expect(leaf.NotAfter).To(BeTemporally("~", time.Now().Add(tc.want), 30*time.Second))
		})
	}
}

func TestTokenReviewsAreCachedAndCoalesced(t *testing.T) {
	g := NewWithT(t)
	mustPod(t, appsNS, "cached", "cached", nodeA, nil)
	id := identity.New(td, appsNS, "cached")
	reviews := func() float64 { return testutil.ToFloat64(fx.srv.auth.reviews.WithLabelValues("authenticated")) }

	tok := podToken(t, fx.nodeProxyA)
	before := reviews()
	for range 5 {
		_, err := request(t.Context(), fx.conn, tok, mustCSR(t, id), 0)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(reviews()).To(Equal(before+1), "one TokenReview for five requests with one token")

	tok = podToken(t, fx.nodeProxyA)
	before = reviews()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	csr := mustCSR(t, id)
	for range 20 {
		wg.Go(func() {
			_, err := request(t.Context(), fx.conn, tok, csr, 0)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(reviews()).To(Equal(before+1), "twenty concurrent first requests share one TokenReview")
}

func TestTokenOfDeletedPodIsRefusedDespiteTheCache(t *testing.T) {
	g := NewWithT(t)
	pod := mustPod(t, appsNS, "gone", "gone", nodeA, nil)
	tok := podToken(t, pod)
	id := identity.New(td, appsNS, "gone")
	_, err := request(t.Context(), fx.conn, tok, mustCSR(t, id), 0)
	g.Expect(err).NotTo(HaveOccurred())

	g.Expect(kube.CoreV1().Pods(appsNS).Delete(t.Context(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})).To(Succeed())
	g.Eventually(func(g Gomega) {
		_, err := request(t.Context(), fx.conn, tok, mustCSR(t, id), 0)
		g.Expect(status.Code(err)).To(Equal(codes.Unauthenticated))
		g.Expect(err.Error()).To(ContainSubstring("no longer exists"))
	}).WithTimeout(10 * time.Second).Should(Succeed())
}

func TestAuthenticatorForXDS(t *testing.T) {
	g := NewWithT(t)
	wp := mustPod(t, appsNS, "wp", "wp", nodeB, map[string]string{LabelWaypoint: "wp"})
	a := fx.srv.Authenticator()

	c, err := a.Authenticate(t.Context(), podToken(t, fx.nodeProxyA))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c).To(Equal(Caller{
		Identity: identity.New(td, meshNS, DefaultNodeServiceAccount),
		PodName:  fx.nodeProxyA.Name, PodUID: string(fx.nodeProxyA.UID), NodeName: nodeA, NodeProxy: true,
	}))

	c, err = a.Authenticate(t.Context(), podToken(t, wp))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Waypoint).To(Equal("wp"))
	g.Expect(c.NodeProxy).To(BeFalse())

	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+podToken(t, fx.nodeProxyB)))
	c, err = a.AuthenticateContext(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.NodeName).To(Equal(nodeB))

	_, err = a.AuthenticateContext(t.Context())
	g.Expect(status.Code(err)).To(Equal(codes.Unauthenticated))
}

// Without the node in the token (clusters before 1.30, or the feature off), the node is the bound pod's.
func TestNodeFromBoundPod(t *testing.T) {
	g := NewWithT(t)
	c, err := fx.srv.auth.callerFrom(t.Context(), reviewed{
		namespace: meshNS, serviceAccount: DefaultNodeServiceAccount,
		podName: fx.nodeProxyB.Name, podUID: string(fx.nodeProxyB.UID),
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.NodeName).To(Equal(nodeB))
	g.Expect(c.NodeProxy).To(BeTrue())

	_, err = fx.srv.auth.callerFrom(t.Context(), reviewed{
		namespace: meshNS, serviceAccount: DefaultNodeServiceAccount, podName: fx.nodeProxyB.Name, podUID: "another-uid",
	})
	g.Expect(status.Code(err)).To(Equal(codes.Unauthenticated))
}

// A pod the informer has not seen yet is found by asking the API server.
func TestPodOnNodeFallsBackToTheAPIServer(t *testing.T) {
	g := NewWithT(t)
	mustPod(t, appsNS, "fresh", "fresh", nodeA, nil)
	idle, err := NewServer(ServerConfig{Client: kube, Namespace: meshNS, TrustDomain: td, CASecret: caSecretName})
	g.Expect(err).NotTo(HaveOccurred()) // never Run: its informer is empty

	ok, err := idle.podOnNode(t.Context(), nodeA, appsNS, "fresh")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ok).To(BeTrue())
	ok, err = idle.podOnNode(t.Context(), nodeB, appsNS, "fresh")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ok).To(BeFalse())
}

func TestServingCertificate(t *testing.T) {
	g := NewWithT(t)
	cert, err := fx.srv.ServingCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	id, err := identity.VerifyChain(cert.Certificate, fx.rootPool, td, x509.ExtKeyUsageServerAuth)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(id).To(Equal(identity.New(td, meshNS, "ambient-xds")))
	g.Expect(cert.Leaf.DNSNames).To(ContainElements("ambient-xds.ambient-system.svc", "ambient-xds.ambient-system.svc.cluster.local", "localhost", "ca.example.test"))
	g.Expect(cert.Leaf.IPAddresses).To(ContainElement(Satisfy(func(ip net.IP) bool { return ip.Equal(net.ParseIP("192.0.2.10")) })))
	g.Expect(cert.Leaf.NotAfter).To(BeTemporally("~", time.Now().Add(DefaultWorkloadTTL), time.Minute))

	again, err := fx.srv.ServingCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(BeIdenticalTo(cert), "reused until half-life")

	fx.srv.mu.Lock()
	fx.srv.serving.renewAt = time.Now().Add(-time.Second)
	fx.srv.mu.Unlock()
	renewed, err := fx.srv.ServingCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(renewed.Leaf.SerialNumber).NotTo(Equal(cert.Leaf.SerialNumber), "renewed after half-life")
}

func TestRootFromSecretRotationAndRemoval(t *testing.T) {
	g := NewWithT(t)
	const secret = "rotating-ca"
	srv, err := NewServer(ServerConfig{Client: kube, Namespace: meshNS, TrustDomain: td, CASecret: secret, Logger: logr.Discard()})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		g.Expect(<-done).To(Succeed())
	}()

	mustPod(t, appsNS, "rot", "rot", nodeA, nil)
	id := identity.New(td, appsNS, "rot")
	call := func() (*apiv1alpha1.CertificateResponse, error) {
		ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+podToken(t, fx.nodeProxyA)))
		return srv.CreateCertificate(ctx, &apiv1alpha1.CertificateRequest{Csr: string(mustCSR(t, id))})
	}

	// No Secret: not ready, no serving certificate, Unavailable.
	g.Eventually(srv.synced.Load).Should(BeTrue())
	g.Expect(srv.Ready()).To(BeFalse())
	_, err = srv.ServingCertificate(nil)
	g.Expect(err).To(MatchError(ContainSubstring("ambient-system/rotating-ca is not loaded")))
	_, err = call()
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable))
	g.Expect(err.Error()).To(ContainSubstring("CA Secret ambient-system/rotating-ca is not loaded"))

	// The Secret appears.
	root1, key1, err := NewRoot(td, 240*time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(putSecret(t.Context(), secret, root1, key1)).To(Succeed())
	g.Eventually(srv.Ready).Should(BeTrue())
	resp, err := call()
	g.Expect(err).NotTo(HaveOccurred())
	raw, _ := chainOf(g, resp)
	_, err = identity.VerifyChain(raw, poolOf(g, root1), td, x509.ExtKeyUsageClientAuth)
	g.Expect(err).NotTo(HaveOccurred())
	serving1, err := srv.ServingCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())

	// Rotation to a root that expires in 2h: new certificates chain to it and are capped at its expiry;
	// the bundle keeps the old root for the certificates it signed.
	root2, key2, err := NewRoot(td, 2*time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(putSecret(t.Context(), secret, root2, key2)).To(Succeed())
	g.Eventually(func(g Gomega) {
		resp, err := call()
		g.Expect(err).NotTo(HaveOccurred())
		raw, leaf := chainOf(g, resp)
		_, err = identity.VerifyChain(raw, poolOf(g, root2), td, x509.ExtKeyUsageClientAuth)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = identity.VerifyChain(raw, poolOf(g, []byte(resp.GetTrustBundle())), td, x509.ExtKeyUsageClientAuth)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(resp.GetTrustBundle()).To(ContainSubstring(string(root1)))
		g.Expect(resp.GetTrustBundle()).To(ContainSubstring(string(root2)))
		g.Expect(leaf.NotAfter).To(BeTemporally("<=", time.Now().Add(2*time.Hour)), "capped at the root's expiry")
	}).Should(Succeed())
	serving2, err := srv.ServingCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(serving2).NotTo(BeIdenticalTo(serving1))
	_, err = identity.VerifyChain(serving2.Certificate, poolOf(g, root2), td, x509.ExtKeyUsageServerAuth)
	g.Expect(err).NotTo(HaveOccurred(), "serving certificate re-issued from the new root")

	// A broken update keeps the current root.
	_, err = kube.CoreV1().Secrets(meshNS).Update(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: meshNS}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("junk"), corev1.TLSPrivateKeyKey: key2},
	}, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Consistently(srv.Ready).WithTimeout(500 * time.Millisecond).Should(BeTrue())
	g.Expect(srv.TrustBundlePEM()).To(ContainSubstring(string(root2)))

	// Removal: not ready, Unavailable.
	g.Expect(kube.CoreV1().Secrets(meshNS).Delete(t.Context(), secret, metav1.DeleteOptions{})).To(Succeed())
	g.Eventually(srv.Ready).Should(BeFalse())
	_, err = call()
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable))
}

func TestJWTExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		token string
		want  time.Time
		ok    bool
	}{
		{"h." + enc(`{"exp":1900000000}`) + ".s", time.Unix(1900000000, 0), true},
		{"h." + enc(`{"exp":1.9e9}`) + ".s", time.Unix(1900000000, 0), true},
		{"h." + enc(`{"sub":"x"}`) + ".s", time.Time{}, false},
		{"h.!!!.s", time.Time{}, false},
		{"opaque", time.Time{}, false},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			g := NewWithT(t)
			got, ok := jwtExpiry(tc.token)
			g.Expect(ok).To(Equal(tc.ok))
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

func TestStripPod(t *testing.T) {
	g := NewWithT(t)
	in := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n", UID: "u", Labels: map[string]string{LabelWaypoint: "w", "app": "x"},
			Annotations: map[string]string{"big": strings.Repeat("x", 1000)}},
		Spec:   corev1.PodSpec{NodeName: "node", ServiceAccountName: "sa", Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
	}
	out, err := stripPod(in)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(Equal(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n", UID: "u", Labels: map[string]string{LabelWaypoint: "w"}},
		Spec:       corev1.PodSpec{NodeName: "node", ServiceAccountName: "sa"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}))
	again, err := stripPod(out)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(Equal(out), "idempotent")
}

func TestRetiredRootsLeaveTheBundleAfterTheWorkloadTTL(t *testing.T) {
	g := NewWithT(t)
	srv, err := NewServer(ServerConfig{Client: kube, Namespace: meshNS, TrustDomain: td, CASecret: "unit-ca", WorkloadTTL: time.Hour})
	g.Expect(err).NotTo(HaveOccurred()) // never Run: the test fills its Secret store
	now := time.Now()
	srv.now = func() time.Time { return now }
	secret := func(certPEM, keyPEM []byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unit-ca", Namespace: meshNS},
			Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM}}
	}
	root1, key1, _ := NewRoot(td, 240*time.Hour)
	root2, key2, _ := NewRoot(td, 240*time.Hour)

	g.Expect(srv.secrets.GetStore().Add(secret(root1, key1))).To(Succeed())
	srv.syncRoot()
	g.Expect(string(srv.TrustBundlePEM())).To(Equal(string(root1)))

	g.Expect(srv.secrets.GetStore().Update(secret(root2, key2))).To(Succeed())
	srv.syncRoot()
	g.Expect(string(srv.TrustBundlePEM())).To(Equal(string(root2) + string(root1)))

	now = now.Add(59 * time.Minute)
	g.Expect(string(srv.TrustBundlePEM())).To(Equal(string(root2)+string(root1)), "certificates of the old root may still live")
	now = now.Add(2 * time.Minute)
	g.Expect(string(srv.TrustBundlePEM())).To(Equal(string(root2)), "no certificate of the old root is alive any more")
}
