package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

var xdsID = identity.New(td, meshNS, DefaultServiceAccount)

// newTestClient is a node proxy's client on node-a, talking to the shared CA unless options say otherwise.
func newTestClient(t *testing.T, opts ...func(*caclient.ClientConfig)) *caclient.Client {
	t.Helper()
	c, _ := newTestClientConfig(t, opts...)
	return c
}

// newTestClientConfig is newTestClient, also returning the client's configuration.
func newTestClientConfig(t *testing.T, opts ...func(*caclient.ClientConfig)) (*caclient.Client, caclient.ClientConfig) {
	t.Helper()
	cfg := caclient.ClientConfig{
		Address: fx.addr, ServerIdentity: xdsID,
		RootCertFile: writeFile(t, "root-cert.pem", fx.rootPEM),
		TokenFile:    writeFile(t, "token", []byte(podToken(t, fx.nodeProxyA))),
		Logger:       logr.Discard(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := caclient.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, cfg
}

// workloadOnNodeA creates a pod with its own service account on node-a and returns its identity.
func workloadOnNodeA(t *testing.T, sa string) identity.Identity {
	t.Helper()
	mustPod(t, appsNS, sa, sa, nodeA, nil)
	return identity.New(td, appsNS, sa)
}

func TestClientFetchesCachesAndForgets(t *testing.T) {
	g := NewWithT(t)
	c := newTestClient(t)
	id := workloadOnNodeA(t, "cli-cache")

	cert, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	got, err := identity.VerifyChain(cert.Certificate, c.Roots(), td, x509.ExtKeyUsageClientAuth)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(id))
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	g.Expect(ok).To(BeTrue())
	g.Expect(key.Curve).To(Equal(elliptic.P256()))
	g.Expect(c.Expiry(id)).To(Equal(cert.Leaf.NotAfter))
	g.Expect(fx.rpcs.count(id)).To(Equal(1))

	again, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(BeIdenticalTo(cert))
	g.Expect(fx.rpcs.count(id)).To(Equal(1), "a cached certificate costs no RPC")

	c.Forget(id)
	g.Expect(c.Expiry(id)).To(BeZero())
	fresh, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fx.rpcs.count(id)).To(Equal(2))
	g.Expect(fresh.PrivateKey.(*ecdsa.PrivateKey).Equal(key)).To(BeFalse(), "a fresh key per fetch")

	_, err = c.Certificate(t.Context(), identity.New("example.org", appsNS, "cli-cache"))
	g.Expect(err).To(MatchError(certs.ErrNoCertificate))

	// Refusals come back as the CA's status.
	_, err = c.Certificate(t.Context(), identity.New(td, appsNS, "nobody"))
	g.Expect(status.Code(err)).To(Equal(codes.PermissionDenied))

	g.Expect(c.Close()).To(Succeed())
	_, err = c.Certificate(t.Context(), id)
	g.Expect(err).To(MatchError(caclient.ErrClientClosed))
}

func TestClientCoalescesConcurrentFirstRequests(t *testing.T) {
	g := NewWithT(t)
	c := newTestClient(t)
	id := workloadOnNodeA(t, "cli-coalesce")

	var wg sync.WaitGroup
	got := make(chan *tls.Certificate, 50)
	for range 50 {
		wg.Go(func() {
			cert, err := c.Certificate(t.Context(), id)
			if err != nil {
				t.Error(err)
			}
			got <- cert
		})
	}
	wg.Wait()
	close(got)
	first := <-got
	for cert := range got {
		g.Expect(cert).To(BeIdenticalTo(first))
	}
	g.Expect(fx.rpcs.count(id)).To(Equal(1), "50 concurrent first requests, one RPC")
}

func TestClientRenewsAtHalfLife(t *testing.T) {
	g := NewWithT(t)
	c := newTestClient(t, func(cfg *caclient.ClientConfig) { cfg.Validity = 4 * time.Second })
	id := workloadOnNodeA(t, "cli-renew")

	cert, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cert.Leaf.NotAfter).To(BeTemporally("~", time.Now().Add(4*time.Second), 2*time.Second))

	// Renewed in the background before it expires: a caller never sees the old one expire.
	g.Eventually(func(g Gomega) {
		g.Expect(c.Expiry(id)).To(BeTemporally(">", cert.Leaf.NotAfter))
	}).WithTimeout(15 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	renewed, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(renewed.Leaf.SerialNumber).NotTo(Equal(cert.Leaf.SerialNumber))
	g.Expect(fx.rpcs.count(id)).To(BeNumerically(">=", 2))
}

func TestClientKeepsItsCertificateWhileTheCAIsDown(t *testing.T) {
	g := NewWithT(t)
	rpcs := &rpcCounter{byID: map[string]int{}}
	gs, addr, err := serve(fx.srv, "127.0.0.1:0", rpcs)
	g.Expect(err).NotTo(HaveOccurred())
	c := newTestClient(t, func(cfg *caclient.ClientConfig) { cfg.Address, cfg.Validity = addr, 6*time.Second })
	id := workloadOnNodeA(t, "cli-down")

	cert, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	gs.Stop()

	// Past the renewal time (half-life, at most 55% of 6s): renewal failed, the certificate is still served.
	time.Sleep(time.Until(cert.Leaf.NotAfter.Add(-2 * time.Second)))
	g.Expect(rpcs.count(id)).To(Equal(1))
	still, err := c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(still).To(BeIdenticalTo(cert))
	g.Expect(c.Expiry(id)).To(Equal(cert.Leaf.NotAfter))

	// Expired and the CA still down: no certificate rather than an expired one.
	time.Sleep(time.Until(cert.Leaf.NotAfter.Add(100 * time.Millisecond)))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = c.Certificate(ctx, id)
	g.Expect(err).To(HaveOccurred())

	// The CA is back on the same address: the client reconnects and gets a new certificate.
	gs2, _, err := serve(fx.srv, addr, rpcs)
	g.Expect(err).NotTo(HaveOccurred())
	defer gs2.Stop()
	g.Eventually(func(g Gomega) {
		got, err := c.Certificate(t.Context(), id)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got.Leaf.NotAfter).To(BeTemporally(">", cert.Leaf.NotAfter))
	}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
}

func TestClientVerifiesTheServersIdentity(t *testing.T) {
	id := workloadOnNodeA(t, "cli-verify")

	// A server with the right identity from a root the client does not trust.
	otherRoot, otherKey, err := NewRoot(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewSigner(otherRoot, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chainPEM, err := other.sign(&key.PublicKey, xdsID, []string{"localhost"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	pair, err := tls.X509KeyPair(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	impostor := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}})))
	fx.srv.Register(impostor)
	go func() { _ = impostor.Serve(lis) }()
	defer impostor.Stop()

	cases := []struct {
		name string
		opt  func(*caclient.ClientConfig)
		want string
	}{
		{"unexpected identity", func(cfg *caclient.ClientConfig) { cfg.ServerIdentity = identity.New(td, meshNS, "not-the-ca") },
			"presented the identity spiffe://cluster.local/ns/ambient-system/sa/ambient-xds, want spiffe://cluster.local/ns/ambient-system/sa/not-the-ca"},
		{"untrusted root", func(cfg *caclient.ClientConfig) { cfg.Address = lis.Addr().String() }, "certificate signed by unknown authority"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c := newTestClient(t, tc.opt)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err := c.Certificate(ctx, id)
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
			g.Expect(fx.rpcs.count(id)).To(BeZero(), "the token never reached a server")
		})
	}
}

func TestClientRereadsTokenAndRootFiles(t *testing.T) {
	g := NewWithT(t)
	c, cfg := newTestClientConfig(t)
	id := workloadOnNodeA(t, "cli-files")

	// The token file is read on every request.
	good, err := os.ReadFile(cfg.TokenFile)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(cfg.TokenFile, []byte(podToken(t, mustPod(t, appsNS, "x", "x", nodeA, nil))), 0o600)).To(Succeed())
	_, err = c.Certificate(t.Context(), id)
	g.Expect(status.Code(err)).To(Equal(codes.PermissionDenied), "a workload's token may not get another identity")
	g.Expect(os.WriteFile(cfg.TokenFile, good, 0o600)).To(Succeed()) // #nosec G703 -- a file of t.TempDir
	_, err = c.Certificate(t.Context(), id)
	g.Expect(err).NotTo(HaveOccurred())

	// Roots merge the root file and the CA's bundle, and follow the file.
	other, err := NewSigner(must2(NewRoot(td, time.Hour)))
	g.Expect(err).NotTo(HaveOccurred())
	foreign, _, err := other.Issue(id, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	raw := pemBlocks(foreign)
	_, err = identity.VerifyChain(raw, c.Roots(), td, x509.ExtKeyUsageClientAuth)
	g.Expect(err).To(HaveOccurred())
	g.Expect(os.WriteFile(cfg.RootCertFile, append(append([]byte{}, fx.rootPEM...), other.RootPEM()...), 0o600)).To(Succeed())
	later := time.Now().Add(time.Minute) // a distinct modification time even on coarse file systems
	g.Expect(os.Chtimes(cfg.RootCertFile, later, later)).To(Succeed())
	g.Eventually(func() error {
		_, err := identity.VerifyChain(raw, c.Roots(), td, x509.ExtKeyUsageClientAuth)
		return err
	}).WithTimeout(5 * time.Second).Should(Succeed())
}

func must2(a, b []byte, err error) ([]byte, []byte) {
	if err != nil {
		panic(err)
	}
	return a, b
}

func pemBlocks(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}
