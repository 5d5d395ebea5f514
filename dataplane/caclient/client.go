package caclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	apiv1alpha1 "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

const (
	// rpcTimeout bounds one CreateCertificate call.
	rpcTimeout = 30 * time.Second
	// rootCheckInterval bounds how often the root file's modification time is checked.
	rootCheckInterval = time.Second
	// Renewal retries back off from minRetry to maxRetry.
	minRetry = time.Second
	maxRetry = 30 * time.Second
)

// ErrClientClosed is returned by a closed Client.
var ErrClientClosed = errors.New("ca: client closed")

// ClientConfig configures a Client.
type ClientConfig struct {
	// Address of the CA, host:port (the proxies' --xds-address). Required.
	Address string
	// ServerIdentity is the SPIFFE identity the CA must present (--xds-identity); host names are not
	// checked. Required.
	ServerIdentity identity.Identity
	// RootCertFile is the PEM trust bundle to verify the CA with (--root-cert); re-read when it changes.
	// Required.
	RootCertFile string
	// TokenFile holds the service-account token for the CA's audience (--token); read on every request,
	// as the kubelet rotates it. Required.
	TokenFile string
	// TrustDomain of the mesh; identities of other trust domains are not requested. Default
	// ServerIdentity's.
	TrustDomain string
	// Validity is the certificate lifetime to ask for; 0 means the CA's (24h by default).
	Validity time.Duration
	// Logger logs renewals and their failures.
	Logger logr.Logger
	// DialOptions are added to the client's (tests add interceptors).
	DialOptions []grpc.DialOption
}

// Client is a certs.Provider backed by the CA: it fetches a certificate per identity on first use (a
// fresh ECDSA P-256 key and CSR each time), coalesces concurrent first requests, renews at half-life
// (with jitter) in the background, and when renewal fails keeps the current certificate until it expires
// while retrying with backoff. Roots is the root file merged with the CA's trust bundle.
type Client struct {
	cfg    ClientConfig
	log    logr.Logger
	conn   *grpc.ClientConn
	rpc    apiv1alpha1.CertificateServiceClient
	roots  *trustBundle
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	entries map[identity.Identity]*entry
}

var _ certs.Provider = (*Client)(nil)

// entry is one identity's certificate and its renewal.
type entry struct {
	id       identity.Identity
	cert     *tls.Certificate // nil until the first fetch succeeded
	call     *fetchCall       // the fetch in flight, if any
	timer    *time.Timer      // the next renewal or retry
	failures int
}

type fetchCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// NewClient checks the configuration, reads the root file and sets up the gRPC connection (which
// connects on first use and reconnects by itself).
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Address == "":
		return nil, errors.New("ca: ClientConfig.Address is required")
	case cfg.ServerIdentity.IsZero():
		return nil, errors.New("ca: ClientConfig.ServerIdentity is required")
	case cfg.RootCertFile == "":
		return nil, errors.New("ca: ClientConfig.RootCertFile is required")
	case cfg.TokenFile == "":
		return nil, errors.New("ca: ClientConfig.TokenFile is required")
	case cfg.Validity < 0:
		return nil, fmt.Errorf("ca: ClientConfig.Validity %s is negative", cfg.Validity)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = cfg.ServerIdentity.TrustDomain
	}
	roots := &trustBundle{file: cfg.RootCertFile}
	if err := roots.load(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger.WithName("ca-client"), roots: roots, entries: map[identity.Identity]*entry{}}
	// Hostnames are not verified (the CA is reached by Service name, IP or localhost alike); the server
	// must instead present a chain to the trust bundle whose SPIFFE identity is ServerIdentity.
	tlsConfig := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // #nosec G402 -- VerifyConnection verifies the chain and the SPIFFE identity
		VerifyConnection:   c.verifyServer,
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithPerRPCCredentials(tokenFile(cfg.TokenFile)),
		// No service config from DNS: gRPC's resolver would otherwise wait for a TXT lookup
		// (_grpc_config.<name>) before the first connect, seconds where DNS is slow or absent.
		grpc.WithDisableServiceConfig(),
		// Pings only while a call is open, no more often than gRPC servers accept by default (5 min).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}),
		// Reconnect quickly: a proxy that starts while the CA's Service has no ready endpoint (a rollout
		// of the xDS server) must not sit in gRPC's default backoff (up to 2 min) while its pods wait.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("ca: client for %s: %w", cfg.Address, err)
	}
	c.conn, c.rpc = conn, apiv1alpha1.NewCertificateServiceClient(conn)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Certificate returns the identity's current certificate, fetching it from the CA on first use (or when
// the one held has expired). Concurrent first requests share one fetch; ctx bounds only the wait.
func (c *Client) Certificate(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	if id.TrustDomain != c.cfg.TrustDomain {
		return nil, fmt.Errorf("%w %s: not in the mesh's trust domain %q", certs.ErrNoCertificate, id, c.cfg.TrustDomain)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClientClosed
	}
	e := c.entries[id]
	if e == nil {
		e = &entry{id: id}
		c.entries[id] = e
	}
	if e.cert != nil && time.Now().Before(e.cert.Leaf.NotAfter) {
		cert := e.cert
		c.mu.Unlock()
		return cert, nil
	}
	call := e.call
	if call == nil {
		call = c.startFetch(e)
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.cert, call.err
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the certificate of %s: %w", id, ctx.Err())
	}
}

// Roots returns the trust bundle: the root file (re-read when it changed) and the CA's latest bundle.
func (c *Client) Roots() *x509.CertPool { return c.roots.pool() }

// Expiry returns when the identity's current certificate expires; zero when there is none.
func (c *Client) Expiry(id identity.Identity) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil && e.cert != nil {
		return e.cert.Leaf.NotAfter
	}
	return time.Time{}
}

// Forget drops an identity no longer needed and stops renewing it.
func (c *Client) Forget(id identity.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(c.entries, id)
	}
}

// Close stops renewals, waits for fetches in flight and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, e := range c.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return c.conn.Close()
}

// startFetch starts fetching e's certificate; c.mu is held.
func (c *Client) startFetch(e *entry) *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	e.call = call
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	c.wg.Go(func() {
		cert, err := c.fetch(c.ctx, e.id)
		call.cert, call.err = cert, err
		c.mu.Lock()
		e.call = nil
		current := !c.closed && c.entries[e.id] == e
		switch {
		case err == nil:
			e.cert, e.failures = cert, 0
			if current {
				now := time.Now()
				// Half-life from now (NotBefore is back-dated for clock skew), with ±5% jitter.
				renewIn := time.Duration(float64(cert.Leaf.NotAfter.Sub(now)) * (0.45 + 0.1*rand.Float64())) // #nosec G404 -- jitter, not a secret
				e.timer = time.AfterFunc(renewIn, func() { c.renew(e) })
				c.log.V(1).Info("Got a certificate", "identity", e.id.String(),
					"notAfter", cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "renewIn", renewIn.String())
			}
		case e.cert != nil && current:
			// A renewal failed: keep the current certificate and retry with backoff.
			e.failures++
			retry := min(minRetry<<min(e.failures-1, 10), maxRetry)
			retry = time.Duration(float64(retry) * (0.8 + 0.4*rand.Float64())) // #nosec G404 -- jitter, not a secret
			e.timer = time.AfterFunc(retry, func() { c.renew(e) })
			c.log.Error(err, "Cannot renew a certificate; keeping the current one", "identity", e.id.String(),
				"notAfter", e.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "retryIn", retry.String())
		}
		c.mu.Unlock()
		close(call.done)
	})
	return call
}

// renew is the renewal timer's callback.
func (c *Client) renew(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.entries[e.id] != e || e.call != nil {
		return
	}
	c.startFetch(e)
}

// fetch asks the CA for a certificate with a fresh key and checks what comes back.
func (c *Client) fetch(ctx context.Context, id identity.Identity) (*tls.Certificate, error) {
	csrPEM, keyPEM, err := NewCSR(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.rpc.CreateCertificate(ctx, &apiv1alpha1.CertificateRequest{
		Csr: string(csrPEM), ValiditySeconds: int64(c.cfg.Validity / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("request the certificate of %s from the CA at %s: %w", id, c.cfg.Address, err)
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, fmt.Errorf("the CA at %s returned no certificate for %s", c.cfg.Address, id)
	}
	chainPEM := []byte(strings.Join(resp.GetCertChain(), "\n"))
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate from the CA for %s: %w", id, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate from the CA for %s: %w", id, err)
		}
	}
	if b := resp.GetTrustBundle(); b != "" {
		c.roots.setCA([]byte(b))
	}
	got, err := identity.VerifyChain(pair.Certificate, c.roots.pool(), c.cfg.TrustDomain, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, fmt.Errorf("certificate from the CA for %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("the CA returned a certificate for %s, not %s", got, id)
	}
	return &pair, nil
}

// verifyServer checks the CA's chain against the trust bundle and its SPIFFE identity.
func (c *Client) verifyServer(cs tls.ConnectionState) error {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, cert := range cs.PeerCertificates {
		raw[i] = cert.Raw
	}
	got, err := identity.VerifyChain(raw, c.roots.pool(), c.cfg.TrustDomain, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return fmt.Errorf("CA server at %s: %w", c.cfg.Address, err)
	}
	if got != c.cfg.ServerIdentity {
		return fmt.Errorf("CA server at %s presented the identity %s, want %s", c.cfg.Address, got, c.cfg.ServerIdentity)
	}
	return nil
}

// tokenFile sends the token read from a file with every call.
type tokenFile string

// GetRequestMetadata reads the token; the kubelet rotates the file, so it is never cached.
func (f tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	data, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("read the service-account token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return nil, fmt.Errorf("service-account token file %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity is true: the token is never sent in the clear.
func (tokenFile) RequireTransportSecurity() bool { return true }

// trustBundle merges the root file with the CA's bundle.
type trustBundle struct {
	file string

	mu      sync.Mutex
	filePEM []byte
	caPEM   []byte
	modTime time.Time
	size    int64
	checked time.Time
	merged  *x509.CertPool
}

// load reads the root file; it fails when the file holds no certificate.
func (b *trustBundle) load() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reload(time.Now(), true)
}

// reload re-reads the root file if it changed; b.mu is held.
func (b *trustBundle) reload(now time.Time, force bool) error {
	b.checked = now
	info, err := os.Stat(b.file)
	if err != nil {
		return fmt.Errorf("ca: root certificate file: %w", err)
	}
	if !force && info.ModTime().Equal(b.modTime) && info.Size() == b.size {
		return nil
	}
	data, err := os.ReadFile(b.file) // #nosec G304 -- the proxy's operator names the file
	if err != nil {
		return fmt.Errorf("ca: root certificate file: %w", err)
	}
	if _, err := ParseCerts(data); err != nil {
		return fmt.Errorf("ca: root certificate file %s: %w", b.file, err)
	}
	b.modTime, b.size = info.ModTime(), info.Size()
	if !bytes.Equal(data, b.filePEM) {
		b.filePEM, b.merged = data, nil
	}
	return nil
}

func (b *trustBundle) setCA(pemData []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !bytes.Equal(pemData, b.caPEM) {
		b.caPEM, b.merged = bytes.Clone(pemData), nil
	}
}

func (b *trustBundle) pool() *x509.CertPool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := time.Now(); now.Sub(b.checked) >= rootCheckInterval {
		_ = b.reload(now, false) // keep the last good file
	}
	if b.merged == nil {
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(b.filePEM)
		p.AppendCertsFromPEM(b.caPEM)
		b.merged = p
	}
	return b.merged
}
