package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const trustDomain = "cluster.local"

var (
	clientID = identity.New(trustDomain, "client-ns", "client-sa")
	serverID = identity.New(trustDomain, "server-ns", "server-sa")
)

// newSigner returns a fresh CA for a trust domain.
func newSigner(t testing.TB, td string) *ca.Signer {
	t.Helper()
	certPEM, keyPEM, err := ca.NewRoot(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewSigner(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// issue returns a workload certificate for id, valid for ttl (negative: already expired).
func issue(t testing.TB, s *ca.Signer, id identity.Identity, ttl time.Duration) *tls.Certificate {
	t.Helper()
	chain, key, err := s.Issue(id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// countingListener counts accepted connections and those still open.
type countingListener struct {
	net.Listener
	accepted, open atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// dialHandler is the default test Handler: it dials the authority (an upstream on 127.0.0.1).
var dialHandler = HandlerFunc(func(ctx context.Context, req *Request) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", req.Authority.String())
	if err != nil {
		return nil, Unavailable(err.Error())
	}
	return c, nil
})

// testServer is a Server on 127.0.0.1 with certificates from signer.
type testServer struct {
	*Server
	addr netip.AddrPort
	l    *countingListener
	done chan error
}

func startServer(t testing.TB, signer *ca.Signer, mutate func(*ServerConfig)) *testServer {
	t.Helper()
	cert := issue(t, signer, serverID, time.Hour)
	cfg := ServerConfig{
		GetCertificate: func(netip.AddrPort) (*tls.Certificate, error) { return cert, nil },
		Roots:          signer.Roots,
		TrustDomain:    trustDomain,
		Handler:        dialHandler,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		Server: NewServer(cfg),
		addr:   ln.Addr().(*net.TCPAddr).AddrPort(),
		l:      &countingListener{Listener: ln},
		done:   make(chan error, 1),
	}
	go func() { ts.done <- ts.Serve(ts.l) }()
	t.Cleanup(func() {
		_ = ts.Close()
		if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

func newTestPool(t testing.TB, signer *ca.Signer, mutate func(*PoolConfig)) *Pool {
	t.Helper()
	cert := issue(t, signer, clientID, time.Hour)
	cfg := PoolConfig{
		GetClientCertificate: func(identity.Identity) (*tls.Certificate, error) { return cert, nil },
		Roots:                signer.Roots,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p := NewPool(cfg)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func (ts *testServer) key() PoolKey {
	return PoolKey{Source: clientID, Destination: serverID, Address: ts.addr}
}

// startUpstream serves every accepted connection with serve, on 127.0.0.1.
func startUpstream(t testing.TB, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies everything back and half-closes when the client did.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}); err == nil {
		_ = c.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, c)
}
