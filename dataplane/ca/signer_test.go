package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

func newTestSigner(t *testing.T) *Signer {
	t.Helper()
	certPEM, keyPEM, err := NewRoot("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIssueVerifiesAsWorkloadIdentity(t *testing.T) {
	g := NewWithT(t)
	s := newTestSigner(t)
	id := identity.New("cluster.local", "default", "sleep")
	chain, _, err := s.Issue(id, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())

	var raw [][]byte
	for rest := chain; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		raw = append(raw, b.Bytes)
	}
	g.Expect(raw).To(HaveLen(2))
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		got, err := identity.VerifyChain(raw, s.Roots(), "cluster.local", usage)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(id))
	}
	_, err = identity.VerifyChain(raw, s.Roots(), "example.org", x509.ExtKeyUsageClientAuth)
	g.Expect(err).To(MatchError(ContainSubstring("not in trust domain")))

	other := newTestSigner(t)
	_, err = identity.VerifyChain(raw, other.Roots(), "", x509.ExtKeyUsageClientAuth)
	g.Expect(err).To(MatchError(ContainSubstring("verify peer certificate")))
}

func TestSignCapsTTLAtRootExpiry(t *testing.T) {
	g := NewWithT(t)
	s := newTestSigner(t)
	chain, _, err := s.Issue(identity.New("cluster.local", "a", "b"), 1000*time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	b, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(b.Bytes)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(leaf.NotAfter).To(BeTemporally("<=", s.cert.NotAfter))
}

func TestParseCSRRejects(t *testing.T) {
	id := identity.New("cluster.local", "default", "sleep")
	good, _, err := caclient.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	csrWith := func(key any, tmpl *x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tampered := []byte(string(good))
	tampered[len(tampered)/2] ^= 0x01

	cases := []struct {
		name string
		csr  []byte
		want string
	}{
		{"not PEM", []byte("hello"), "not a PEM"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), "bad certificate request"},
		{"tampered", tampered, "bad certificate request"},
		{"RSA key", csrWith(rsaKey, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}), "ECDSA P-256"},
		{"P-384 key", csrWith(p384, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}), "ECDSA P-256"},
		{"no SAN", csrWith(p256, &x509.CertificateRequest{}), "exactly one URI SAN"},
		{"DNS SAN too", csrWith(p256, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: []string{"x"}}), "exactly one URI SAN"},
		{"not a workload identity", csrWith(p256, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "td", Path: "/x"}}}), "bad certificate request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			_, _, err := ParseCSR(tc.csr)
			g.Expect(err).To(MatchError(ErrBadCSR))
			g.Expect(err.Error()).To(ContainSubstring(tc.want))
		})
	}
	g := NewWithT(t)
	_, got, err := ParseCSR(good)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(id))
}
