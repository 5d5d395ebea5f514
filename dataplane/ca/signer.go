// Package ca is the mesh's certificate authority: it generates the root, signs workload CSRs with
// SPIFFE URI SANs (ECDSA P-256), serves CertificateService over gRPC, authenticating callers with
// Kubernetes TokenReview and authorizing them by the pods on their node (server.go, auth.go). The proxies'
// client of that service is package caclient.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Signer signs workload certificates with a root (or intermediate) key.
type Signer struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	// now is the clock; tests move it.
	now func() time.Time
}

// NewRoot generates a self-signed ECDSA P-256 root for a trust domain and returns its PEM certificate
// and PKCS#8 key.
func NewRoot(trustDomain string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "ambient mesh root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode root key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// NewSigner loads a CA certificate and key (PEM). The key may be PKCS#8, SEC 1 (EC) or PKCS#1 (RSA).
func NewSigner(certPEM, keyPEM []byte) (*Signer, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key pair: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate is not a CA (basic constraints)")
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key cannot sign")
	}
	block, _ := pem.Decode(certPEM)
	return &Signer{cert: cert, certPEM: pem.EncodeToMemory(block), key: key, now: time.Now}, nil
}

// RootPEM returns the CA certificate, the trust bundle peers verify with.
func (s *Signer) RootPEM() []byte { return s.certPEM }

// Roots returns the CA certificate as a pool.
func (s *Signer) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.cert)
	return p
}

// ErrBadCSR wraps every reason a CSR is refused for its content.
var ErrBadCSR = errors.New("bad certificate request")

// ParseCSR parses a PEM CSR, checks its signature and key (ECDSA P-256 only) and returns it with the
// identity of its only URI SAN.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, identity.Identity, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, identity.Identity{}, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, identity.Identity{}, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, identity.Identity{}, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, identity.Identity{}, fmt.Errorf("%w: key must be ECDSA P-256", ErrBadCSR)
	}
	if len(csr.URIs) != 1 || len(csr.DNSNames) != 0 || len(csr.IPAddresses) != 0 || len(csr.EmailAddresses) != 0 {
		return nil, identity.Identity{}, fmt.Errorf("%w: want exactly one URI SAN and no other SAN", ErrBadCSR)
	}
	id, err := identity.Parse(csr.URIs[0].String())
	if err != nil {
		return nil, identity.Identity{}, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	return csr, id, nil
}

// Sign issues a workload certificate for the CSR's public key and identity, valid for ttl, usable for both
// TLS client and server authentication. It returns the PEM chain: the leaf, then the signer's certificate.
func (s *Signer) Sign(csr *x509.CertificateRequest, id identity.Identity, ttl time.Duration) ([]byte, error) {
	return s.sign(csr.PublicKey, id, nil, nil, ttl)
}

// NotAfter is the expiry of the CA certificate; no certificate it signs outlives it.
func (s *Signer) NotAfter() time.Time { return s.cert.NotAfter }

// sign issues a certificate for a public key with the identity as its URI SAN and optional DNS and IP
// SANs (the CA's own serving certificate), and returns the PEM chain: leaf, then the signer's certificate.
func (s *Signer) sign(pub any, id identity.Identity, dnsNames []string, ips []net.IP, ttl time.Duration) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := s.now()
	notAfter := now.Add(ttl)
	if notAfter.After(s.cert.NotAfter) {
		notAfter = s.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{id.TrustDomain}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), s.certPEM...), nil
}

// Issue generates a key and signs a certificate for id directly, without a CSR round trip: for static
// setups, tools and tests. It returns the PEM chain and key.
func (s *Signer) Issue(id identity.Identity, ttl time.Duration) (chainPEM, keyPEM []byte, err error) {
	csrPEM, keyPEM, err := caclient.NewCSR(id)
	if err != nil {
		return nil, nil, err
	}
	csr, _, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	chainPEM, err = s.Sign(csr, id, ttl)
	return chainPEM, keyPEM, err
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return serial, nil
}
