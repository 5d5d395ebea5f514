// Package certs gives proxies the certificate of every workload identity they act for and the trust
// bundle to verify peers with. Provider is what the proxy uses; FileProvider reads certificates from files
// (static setups, tests); the CA client in package ca fetches them from the mesh CA.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Provider returns certificates per identity and the trust bundle.
type Provider interface {
	// Certificate returns the current certificate of an identity. It may block to fetch one; callers pass
	// a context with a deadline.
	Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error)
	// Roots is the trust bundle.
	Roots() *x509.CertPool
}

// ErrNoCertificate is returned for an identity the provider has no certificate for.
var ErrNoCertificate = errors.New("no certificate for identity")

// FileProvider reads <dir>/<namespace>/<service-account>/cert-chain.pem and key.pem, and the trust bundle
// from a PEM file. Files are re-read when they change (checked at most once per CheckInterval), so
// rotated certificates are picked up without a restart.
type FileProvider struct {
	Dir       string
	RootsFile string
	// CheckInterval bounds how often file modification times are checked; default 2s.
	CheckInterval time.Duration

	mu    sync.Mutex
	certs map[identity.Identity]*fileEntry
	roots *x509.CertPool
	rootM time.Time
	rootC time.Time
}

type fileEntry struct {
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

// Certificate returns the identity's certificate from its files.
func (p *FileProvider) Certificate(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.certs == nil {
		p.certs = map[identity.Identity]*fileEntry{}
	}
	now := time.Now()
	e := p.certs[id]
	if e != nil && now.Sub(e.checked) < p.interval() {
		return e.cert, nil
	}
	dir := filepath.Join(p.Dir, id.Namespace, id.ServiceAccount)
	chain, key := filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem")
	info, err := os.Stat(chain)
	if err != nil {
		if e != nil {
			return e.cert, nil // keep serving what we have
		}
		return nil, fmt.Errorf("%w %s: %v", ErrNoCertificate, id, err)
	}
	if e != nil && info.ModTime().Equal(e.modTime) {
		e.checked = now
		return e.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(chain, key)
	if err != nil {
		if e != nil {
			return e.cert, nil
		}
		return nil, fmt.Errorf("load certificate of %s from %s: %w", id, dir, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse certificate of %s: %w", id, err)
	}
	if got, err := identity.FromCertificate(leaf); err != nil || got != id {
		return nil, fmt.Errorf("certificate in %s is for %v, not %s", dir, got, id)
	}
	pair.Leaf = leaf
	p.certs[id] = &fileEntry{cert: &pair, modTime: info.ModTime(), checked: now}
	return &pair, nil
}

// Roots returns the trust bundle, re-read when its file changed.
func (p *FileProvider) Roots() *x509.CertPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.roots != nil && now.Sub(p.rootC) < p.interval() {
		return p.roots
	}
	p.rootC = now
	info, err := os.Stat(p.RootsFile)
	if err != nil || (p.roots != nil && info.ModTime().Equal(p.rootM)) {
		return p.roots
	}
	pool, err := LoadRoots(p.RootsFile)
	if err != nil {
		return p.roots
	}
	p.roots, p.rootM = pool, info.ModTime()
	return p.roots
}

func (p *FileProvider) interval() time.Duration {
	if p.CheckInterval > 0 {
		return p.CheckInterval
	}
	return 2 * time.Second
}

// LoadRoots reads a PEM trust bundle.
func LoadRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the proxy's operator names the file
	if err != nil {
		return nil, fmt.Errorf("read trust bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("trust bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}

// WriteFiles stores a certificate chain and key where a FileProvider finds them.
func WriteFiles(dir string, id identity.Identity, chainPEM, keyPEM []byte) error {
	d := filepath.Join(dir, id.Namespace, id.ServiceAccount)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if err := os.WriteFile(filepath.Join(d, "key.pem"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d, "cert-chain.pem"), chainPEM, 0o600); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}
