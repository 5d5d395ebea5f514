package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

func TestHandlerStatuses(t *testing.T) {
	signer := newSigner(t, trustDomain)
	byPort := map[uint16]error{
		1: Denied("policy deny-all"),
		2: Unavailable("no such workload"),
		3: errors.New("dial: connection refused"),
		4: BadRequest("target not local"),
	}
	var ended atomic.Int64
	srv := startServer(t, signer, func(c *ServerConfig) {
		c.Handler = HandlerFunc(func(_ context.Context, req *Request) (net.Conn, error) {
			return nil, byPort[req.Authority.Port()]
		})
		c.OnStreamEnd = func(_ *Request, st StreamStats) {
			if st.Status != http.StatusOK && st.Err != nil {
				ended.Add(1)
			}
		}
	})
	pool := newTestPool(t, signer, nil)
	cases := []struct {
		port   uint16
		status int
		reason string
	}{
		{1, http.StatusUnauthorized, "policy deny-all"},
		{2, http.StatusServiceUnavailable, "no such workload"},
		{3, http.StatusServiceUnavailable, "upstream unavailable"}, // internal errors are not sent.
		{4, http.StatusBadRequest, "target not local"},
	}
	for _, tc := range cases {
		t.Run(http.StatusText(tc.status)+"/"+tc.reason, func(t *testing.T) {
			g := NewWithT(t)
			_, err := pool.Connect(context.Background(), srv.key(), mustAddrPort("10.1.2.3", tc.port), nil)
			var he *Error
			g.Expect(errors.As(err, &he)).To(BeTrue(), "error %v", err)
			g.Expect(he.Status).To(Equal(tc.status))
			g.Expect(he.Reason).To(Equal(tc.reason))
			g.Expect(StatusOf(err)).To(Equal(tc.status))
		})
	}
	NewWithT(t).Eventually(ended.Load).Should(BeEquivalentTo(len(cases)))
	// All refusals went over one pooled connection.
	NewWithT(t).Expect(srv.l.accepted.Load()).To(BeEquivalentTo(1))
}

// rawClient opens an HTTP/2 connection to srv with x/net/http2 directly, to send requests the Pool
// would never send.
func rawClient(t *testing.T, srv *testServer, cert *tls.Certificate) *http2.ClientConn { //nolint:staticcheck // SA1019: test uses x/net/http2 directly.
	t.Helper()
	tc, err := tls.Dial("tcp", srv.addr.String(), &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, //nolint:gosec // G402: test client.
		Certificates:       []tls.Certificate{*cert},
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc) //nolint:staticcheck // SA1019: see above.
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func TestBadRequests(t *testing.T) {
	signer := newSigner(t, trustDomain)
	var called atomic.Int64
	srv := startServer(t, signer, func(c *ServerConfig) {
		c.Handler = HandlerFunc(func(ctx context.Context, req *Request) (net.Conn, error) {
			called.Add(1)
			return dialHandler(ctx, req)
		})
	})
	cc := rawClient(t, srv, issue(t, signer, clientID, time.Hour))
	cases := []struct {
		name, method, host string
	}{
		{"GET", http.MethodGet, "127.0.0.1:80"},
		{"POST", http.MethodPost, "127.0.0.1:80"},
		{"host name", http.MethodConnect, "not-an-ip:80"},
		{"no port", http.MethodConnect, "10.0.0.1"},
		{"port out of range", http.MethodConnect, "[::1]:99999"},
		{"port zero", http.MethodConnect, "10.0.0.1:0"},
		{"zone", http.MethodConnect, "[fe80::1%25eth0]:80"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			req := &http.Request{Method: tc.method, Host: tc.host, Header: http.Header{}, URL: &url.URL{Scheme: "https", Host: tc.host, Path: "/"}}
			if tc.method == http.MethodConnect {
				req.URL = &url.URL{Host: tc.host}
			}
			resp, err := cc.RoundTrip(req)
			g.Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(http.StatusBadRequest))
		})
	}
	NewWithT(t).Expect(called.Load()).To(BeZero())
}

func TestTLSFailures(t *testing.T) {
	signer := newSigner(t, trustDomain)
	otherCA := newSigner(t, "other.org")
	upstream := startUpstream(t, echo)
	var called atomic.Int64
	srv := startServer(t, signer, func(c *ServerConfig) {
		c.Handler = HandlerFunc(func(ctx context.Context, req *Request) (net.Conn, error) {
			called.Add(1)
			return dialHandler(ctx, req)
		})
	})
	bothRoots := func() *x509.CertPool {
		p := signer.Roots()
		p.AddCert(rootCert(t, otherCA))
		return p
	}
	cases := []struct {
		name      string
		cert      *tls.Certificate
		clientTD  func() *x509.CertPool
		dest      identity.Identity
		wantError string
	}{
		{name: "client from another CA and trust domain", cert: issue(t, otherCA, identity.New("other.org", "x", "y"), time.Hour)},
		{name: "same CA, other trust domain", cert: issue(t, signer, identity.New("other.org", "x", "y"), time.Hour)},
		{name: "expired client certificate", cert: issue(t, signer, clientID, -time.Minute)},
		{name: "client trusts other CA too, server from it is still wrong identity", cert: issue(t, signer, clientID, time.Hour), clientTD: bothRoots, dest: identity.New(trustDomain, "server-ns", "impostor"), wantError: "not the expected"},
		{name: "server identity not the expected one", cert: issue(t, signer, clientID, time.Hour), dest: identity.New(trustDomain, "server-ns", "other-sa"), wantError: "not the expected"},
		{name: "server from an untrusted CA", cert: issue(t, signer, clientID, time.Hour), clientTD: otherCA.Roots, wantError: "verify peer certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			pool := newTestPool(t, signer, func(c *PoolConfig) {
				c.GetClientCertificate = func(identity.Identity) (*tls.Certificate, error) { return tc.cert, nil }
				if tc.clientTD != nil {
					c.Roots = tc.clientTD
				}
			})
			key := srv.key()
			if !tc.dest.IsZero() {
				key.Destination = tc.dest
			}
			_, err := pool.Connect(context.Background(), key, upstream, nil)
			g.Expect(err).To(HaveOccurred())
			if tc.wantError != "" {
				g.Expect(err.Error()).To(ContainSubstring(tc.wantError))
			}
		})
	}

	t.Run("no client certificate", func(t *testing.T) {
		g := NewWithT(t)
		tc, err := tls.Dial("tcp", srv.addr.String(), &tls.Config{
			MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
			InsecureSkipVerify: true, //nolint:gosec // G402: test client.
		})
		if err == nil { // TLS 1.3: the client finishes before the server checked its certificate.
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = tc.Read(make([]byte, 1))
			_ = tc.Close()
		}
		g.Expect(err).To(MatchError(ContainSubstring("certificate required")))
	})

	t.Run("no ALPN h2", func(t *testing.T) {
		g := NewWithT(t)
		// Go's TLS server lets an http/1.1-only client finish the handshake without ALPN; the
		// server then closes the connection.
		tc, err := tls.Dial("tcp", srv.addr.String(), &tls.Config{
			MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"},
			InsecureSkipVerify: true, //nolint:gosec // G402: test client.
			Certificates:       []tls.Certificate{*issue(t, signer, clientID, time.Hour)},
		})
		if err == nil {
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = tc.Read(make([]byte, 1))
			_ = tc.Close()
		}
		g.Expect(err).To(HaveOccurred())
	})

	t.Run("TLS 1.2", func(t *testing.T) {
		g := NewWithT(t)
		_, err := tls.Dial("tcp", srv.addr.String(), &tls.Config{
			MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
			InsecureSkipVerify: true, //nolint:gosec // G402: test client.
			Certificates:       []tls.Certificate{*issue(t, signer, clientID, time.Hour)},
		})
		g.Expect(err).To(HaveOccurred())
	})

	NewWithT(t).Expect(called.Load()).To(BeZero())
	// The server is still fine.
	g := NewWithT(t)
	c, err := newTestPool(t, signer, nil).Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.Close()
}

func TestOversizedHeaders(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	big := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3000) // ~105 KiB

	// The pool's client honours the server's SETTINGS_MAX_HEADER_LIST_SIZE and refuses to send.
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil) // receive SETTINGS first
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.Close()
	_, err = pool.Connect(context.Background(), srv.key(), upstream, http.Header{"Baggage": {big}})
	g.Expect(err).To(HaveOccurred())

	// A client that ignores the limit: many fields over the limit get a 431 on that stream;
	// one field over the limit is a connection error (GOAWAY) in x/net/http2's HPACK decoder.
	cert := issue(t, signer, clientID, time.Hour)
	var many []hpack.HeaderField
	for i := range 40 {
		many = append(many, hpack.HeaderField{Name: fmt.Sprintf("x-h%d", i), Value: big[:2048]})
	}
	g.Expect(sendRawHeaders(t, srv, cert, upstream.String(), many)).To(Equal("431"))
	g.Expect(sendRawHeaders(t, srv, cert, upstream.String(), []hpack.HeaderField{{Name: "baggage", Value: big}})).To(Equal("GOAWAY"))

	// And the server serves the next request.
	c, err = pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.Close()
}

// sendRawHeaders sends one CONNECT with extra header fields on a new connection, ignoring the
// server's header size limit, and returns the answer's :status, or "GOAWAY" or "RST_STREAM".
func sendRawHeaders(t *testing.T, srv *testServer, cert *tls.Certificate, authority string, extra []hpack.HeaderField) string {
	t.Helper()
	g := NewWithT(t)
	tc, err := tls.Dial("tcp", srv.addr.String(), &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		InsecureSkipVerify: true, //nolint:gosec // G402: test client.
		Certificates:       []tls.Certificate{*cert},
	})
	g.Expect(err).NotTo(HaveOccurred())
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(tc, http2.ClientPreface)
	g.Expect(err).NotTo(HaveOccurred())
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	g.Expect(fr.WriteSettings()).To(Succeed())
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fields := append([]hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: authority}}, extra...)
	for _, f := range fields {
		g.Expect(enc.WriteField(f)).To(Succeed())
	}
	block := hb.Bytes()
	const chunk = 512 << 10 // the server reads frames up to MaxFrameSize
	first := min(chunk, len(block))
	g.Expect(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:first], EndHeaders: first == len(block)})).To(Succeed())
	for rest := block[first:]; len(rest) > 0; {
		n := min(chunk, len(rest))
		g.Expect(fr.WriteContinuation(1, n == len(rest), rest[:n])).To(Succeed())
		rest = rest[n:]
	}
	for {
		f, err := fr.ReadFrame()
		g.Expect(err).NotTo(HaveOccurred())
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.PseudoValue("status")
		case *http2.SettingsFrame:
			if !f.IsAck() {
				g.Expect(fr.WriteSettingsAck()).To(Succeed())
			}
		case *http2.RSTStreamFrame:
			return "RST_STREAM"
		case *http2.GoAwayFrame:
			return "GOAWAY"
		}
	}
}

func mustAddrPort(ip string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), port)
}

func rootCert(t *testing.T, s *ca.Signer) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(s.RootPEM())
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
