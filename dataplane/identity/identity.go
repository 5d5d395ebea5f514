// Package identity holds the SPIFFE identities of mesh workloads
// (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): parsing, formatting, extraction from
// X.509 certificates, and the peer checks of HBONE's mutual TLS.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Identity is a workload identity. The zero value is "no identity" (a plaintext peer).
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// New returns the identity of a service account; an empty service account means "default".
func New(trustDomain, namespace, serviceAccount string) Identity {
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	return Identity{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
}

// IsZero reports whether id is the empty identity.
func (id Identity) IsZero() bool { return id == Identity{} }

// String returns the SPIFFE URI, or "" for the zero identity.
func (id Identity) String() string {
	if id.IsZero() {
		return ""
	}
	return "spiffe://" + id.Principal()
}

// Principal returns the identity without the scheme, as authorization policies name it:
// "<trust-domain>/ns/<namespace>/sa/<service-account>".
func (id Identity) Principal() string {
	if id.IsZero() {
		return ""
	}
	return id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the SPIFFE URI as a URL, for a certificate's URI SAN.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Parse parses a SPIFFE URI of a workload: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func Parse(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("identity %q: want the scheme spiffe://", s)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("identity %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", s)
	}
	id := Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}
	for _, p := range []string{id.TrustDomain, id.Namespace, id.ServiceAccount} {
		if p == "" || !validSegment(p) {
			return Identity{}, fmt.Errorf("identity %q: empty or invalid segment %q", s, p)
		}
	}
	return id, nil
}

func validSegment(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
		default:
			return false
		}
	}
	return true
}

// ErrNoIdentity is returned for a certificate without exactly one SPIFFE URI SAN.
var ErrNoIdentity = errors.New("certificate has no single spiffe:// URI SAN")

// FromCertificate returns the identity in a certificate's only URI SAN.
func FromCertificate(cert *x509.Certificate) (Identity, error) {
	if cert == nil || len(cert.URIs) != 1 {
		return Identity{}, ErrNoIdentity
	}
	return Parse(cert.URIs[0].String())
}

// VerifyChain checks a peer's certificate chain against the trust bundle (verifying every certificate,
// including validity dates) and returns the leaf's identity. When trustDomain is not empty the identity
// must belong to it.
func VerifyChain(rawCerts [][]byte, roots *x509.CertPool, trustDomain string, usage x509.ExtKeyUsage) (Identity, error) {
	if len(rawCerts) == 0 {
		return Identity{}, errors.New("peer presented no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return Identity{}, fmt.Errorf("parse peer certificate: %w", err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return Identity{}, fmt.Errorf("verify peer certificate: %w", err)
	}
	id, err := FromCertificate(certs[0])
	if err != nil {
		return Identity{}, err
	}
	if trustDomain != "" && id.TrustDomain != trustDomain {
		return Identity{}, fmt.Errorf("peer identity %s is not in trust domain %q", id, trustDomain)
	}
	return id, nil
}
