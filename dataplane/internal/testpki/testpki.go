// Package testpki is a mesh CA for tests: a certs.Provider that issues real workload certificates on
// demand from a fresh root, and can be told to refuse an identity.
package testpki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Issuer is an in-memory certs.Provider backed by a real CA signer.
type Issuer struct {
	Signer *ca.Signer
	mu     sync.Mutex
	certs  map[identity.Identity]*tls.Certificate
	refuse map[identity.Identity]bool
}

// New returns an issuer with a fresh root for the trust domain.
func New(trustDomain string) (*Issuer, error) {
	certPEM, keyPEM, err := ca.NewRoot(trustDomain, time.Hour)
	if err != nil {
		return nil, err
	}
	s, err := ca.NewSigner(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &Issuer{Signer: s, certs: map[identity.Identity]*tls.Certificate{}, refuse: map[identity.Identity]bool{}}, nil
}

// Refuse makes Certificate fail (or succeed again) for an identity.
func (i *Issuer) Refuse(id identity.Identity, refuse bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.refuse[id] = refuse
}

// Certificate issues (once) and returns the identity's certificate.
func (i *Issuer) Certificate(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.refuse[id] {
		return nil, fmt.Errorf("refused %s", id)
	}
	if c := i.certs[id]; c != nil {
		return c, nil
	}
	chain, key, err := i.Signer.Issue(id, time.Hour)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return nil, err
	}
	i.certs[id] = &pair
	return &pair, nil
}

// Roots is the trust bundle.
func (i *Issuer) Roots() *x509.CertPool { return i.Signer.Roots() }
