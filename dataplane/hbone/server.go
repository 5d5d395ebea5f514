package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Wire constants of HBONE (DESIGN.md section 3), in effect on both sides.
const (
	// StreamWindow is the HTTP/2 receive window of every stream, in bytes.
	StreamWindow = 4 << 20
	// ConnWindow is the HTTP/2 receive window of every connection, in bytes.
	ConnWindow = 16 << 20
	// MaxFrameSize is the largest HTTP/2 frame payload either side accepts, in bytes. x/net's client
	// holds a send buffer of min(peer's max frame size, 512 KiB) for the life of every stream, so this
	// bounds the memory of an open tunnel on the sending node; 64 KiB frames move bulk data as fast as
	// 1 MiB ones did in ambient-bench (docs/performance.md).
	MaxFrameSize = 64 << 10
	// DefaultKeepAliveInterval is how long a connection may receive no frame before a PING is sent.
	DefaultKeepAliveInterval = 30 * time.Second
	// DefaultKeepAliveTimeout is how long to wait for the PING answer before closing the connection.
	DefaultKeepAliveTimeout = 10 * time.Second
	// DefaultHandshakeTimeout bounds the TLS handshake of a new connection.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultServerIdleTimeout is how long the server keeps a connection without streams before it
	// sends GOAWAY.
	DefaultServerIdleTimeout = 10 * time.Minute
	// DefaultMaxConcurrentStreams is the server's SETTINGS_MAX_CONCURRENT_STREAMS. It is above the
	// client's [DefaultMaxStreamsPerConn] so that a stream the client just finished but the server has
	// not yet seen closed never makes a new stream be refused.
	DefaultMaxConcurrentStreams = 250
	// DefaultMaxHeaderBytes limits the request header block the server accepts (and the response
	// header block the client accepts).
	DefaultMaxHeaderBytes = 64 << 10
)

// Request is one CONNECT stream as the server's [Handler] sees it.
type Request struct {
	// Authority is the parsed :authority, the target the client wants to reach.
	Authority netip.AddrPort
	// Peer is the client's identity, verified in the TLS handshake.
	Peer identity.Identity
	// PeerAddr is the TCP source of the HBONE connection.
	PeerAddr netip.AddrPort
	// LocalAddr is where the HBONE connection arrived (the listener's address).
	LocalAddr netip.AddrPort
	// Header holds the request headers (forwarded, baggage, traceparent...). Do not modify it.
	Header http.Header
}

// Handler authorizes a CONNECT stream and connects it to its upstream.
type Handler interface {
	// Connect returns the upstream connection for req, or an error: an [*Error] chooses the status sent
	// to the client (400, 401 or 503); any other error answers 503. ctx ends when the stream ends.
	// The server owns the returned connection and closes it when the stream ends.
	Connect(ctx context.Context, req *Request) (net.Conn, error)
}

// HandlerFunc adapts a function to [Handler].
type HandlerFunc func(ctx context.Context, req *Request) (net.Conn, error)

// Connect calls f.
func (f HandlerFunc) Connect(ctx context.Context, req *Request) (net.Conn, error) { return f(ctx, req) }

// StreamStats describes a finished stream, for telemetry.
type StreamStats struct {
	// Status is the HTTP status answered (200, 400, 401, 503).
	Status int
	// Received counts the bytes from the client to the upstream, Sent those from the upstream to the
	// client.
	Received, Sent int64
	// Duration is the time from the request to the end of the stream.
	Duration time.Duration
	// Err is why the stream failed: the handler's error for a status other than 200, else the first
	// relay error, or nil for a stream closed cleanly on both sides.
	Err error
}

// ServerConfig configures a [Server]. GetCertificate, Roots and Handler are required.
type ServerConfig struct {
	// GetCertificate returns the certificate to present on a connection that arrived at local: the
	// proxy presents the identity of the workload it acts for there.
	GetCertificate func(local netip.AddrPort) (*tls.Certificate, error)
	// Roots returns the trust bundle. It is called for every handshake, so it may change at runtime.
	Roots func() *x509.CertPool
	// TrustDomain, if set, is the only trust domain accepted for clients.
	TrustDomain string
	// Handler authorizes and connects every stream.
	Handler Handler
	// Logger receives one line per failed handshake (V(1)) and HTTP/2 errors (V(1)).
	Logger logr.Logger

	// HandshakeTimeout bounds the TLS handshake; default [DefaultHandshakeTimeout].
	HandshakeTimeout time.Duration
	// IdleTimeout is how long a connection without streams is kept before GOAWAY; default
	// [DefaultServerIdleTimeout], negative for never.
	IdleTimeout time.Duration
	// KeepAliveInterval and KeepAliveTimeout: a PING is sent after KeepAliveInterval without any
	// frame received, and the connection is closed if its answer does not arrive within
	// KeepAliveTimeout. Defaults [DefaultKeepAliveInterval], [DefaultKeepAliveTimeout]; a negative
	// interval disables keep-alive.
	KeepAliveInterval, KeepAliveTimeout time.Duration
	// MaxConcurrentStreams per connection; default [DefaultMaxConcurrentStreams].
	MaxConcurrentStreams uint32
	// MaxHeaderBytes limits the request header block; default [DefaultMaxHeaderBytes].
	MaxHeaderBytes int

	// OnStreamEnd, if set, is called once for every stream when it ended, from the stream's goroutine.
	OnStreamEnd func(req *Request, stats StreamStats)
}

// Server accepts HBONE connections. Create it with [NewServer].
type Server struct {
	cfg     ServerConfig
	log     logr.Logger
	tlsConf *tls.Config
	h2      *http2.Server //nolint:staticcheck // SA1019: x/net/http2 is the chosen HTTP/2 implementation; net/http has no ServeConn.
	hs      *http.Server

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{} // raw connections, from Accept until served
	handlers  int                   // streams whose handler runs
}

// NewServer returns a server for cfg. It panics if a required field is missing.
func NewServer(cfg ServerConfig) *Server {
	if cfg.GetCertificate == nil || cfg.Roots == nil || cfg.Handler == nil {
		panic("hbone.NewServer: GetCertificate, Roots and Handler are required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	switch {
	case cfg.IdleTimeout == 0:
		cfg.IdleTimeout = DefaultServerIdleTimeout
	case cfg.IdleTimeout < 0:
		cfg.IdleTimeout = 0
	}
	cfg.KeepAliveInterval, cfg.KeepAliveTimeout = keepAlive(cfg.KeepAliveInterval, cfg.KeepAliveTimeout)
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.WithName("hbone-server"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
	s.tlsConf = &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{http2.NextProtoTLS},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true, // every connection is verified in full, with the current bundle.
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cfg.GetCertificate(addrPortOf(hello.Conn.LocalAddr()))
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(cs, cfg.Roots(), cfg.TrustDomain, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
	// x/net/http2's server reads its settings from the net/http Server passed as BaseConfig.
	s.hs = &http.Server{
		// HTTP/2 ignores ReadHeaderTimeout (the handshake deadline and x/net's 10 s preface timeout
		// bound a silent client); set for linters and any future HTTP/1 use.
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          log.New(logWriter{s.log.V(1)}, "", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          int(cfg.MaxConcurrentStreams),
			MaxReadFrameSize:              MaxFrameSize,
			MaxReceiveBufferPerConnection: ConnWindow,
			MaxReceiveBufferPerStream:     StreamWindow,
			SendPingTimeout:               cfg.KeepAliveInterval,
			PingTimeout:                   cfg.KeepAliveTimeout,
		},
	}
	s.h2 = &http2.Server{} //nolint:staticcheck // SA1019: see Server.h2.
	// Registers the graceful-shutdown hook (GOAWAY on every connection) on s.hs.
	if err := http2.ConfigureServer(s.hs, s.h2); err != nil { //nolint:staticcheck // SA1019: see Server.h2.
		panic(fmt.Sprintf("hbone.NewServer: configure HTTP/2: %v", err))
	}
	return s
}

// keepAlive applies the keep-alive defaults; a negative interval disables it (returned as zero).
func keepAlive(interval, timeout time.Duration) (time.Duration, time.Duration) {
	switch {
	case interval == 0:
		interval = DefaultKeepAliveInterval
	case interval < 0:
		interval = 0
	}
	if timeout <= 0 {
		timeout = DefaultKeepAliveTimeout
	}
	return interval, timeout
}

// Serve accepts connections on l until l fails or the server shuts down; it then returns
// [ErrServerClosed] (after Shutdown or Close) or the accept error. It may serve several listeners at
// once. Serve closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		_ = l.Close()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error(err, "Accepting an HBONE connection failed; retrying", "retryIn", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(c) {
			_ = c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// connInfo is what every stream of one connection shares; it is the connection's http.Handler.
type connInfo struct {
	s         *Server
	peer      identity.Identity
	peerAddr  netip.AddrPort
	localAddr netip.AddrPort
}

func (s *Server) serveConn(c net.Conn) {
	defer s.untrack(c)
	defer func() { _ = c.Close() }()

	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	batch := newTLSBatch(c)
	tc := tls.Server(batch, s.tlsConf)
	if err := tc.Handshake(); err != nil {
		s.log.V(1).Info("HBONE handshake failed", "peer", c.RemoteAddr().String(), "error", err.Error())
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != http2.NextProtoTLS {
		s.log.V(1).Info("HBONE client did not negotiate h2", "peer", c.RemoteAddr().String())
		return
	}
	peer, err := identity.FromCertificate(cs.PeerCertificates[0])
	if err != nil { // cannot happen: VerifyConnection checked it.
		return
	}
	_ = c.SetDeadline(time.Time{})
	if s.isClosing() {
		return
	}
	ci := &connInfo{s: s, peer: peer, peerAddr: addrPortOf(c.RemoteAddr()), localAddr: addrPortOf(c.LocalAddr())}
	s.h2.ServeConn(&tlsBatchConn{Conn: tc, raw: batch}, &http2.ServeConnOpts{BaseConfig: s.hs, Handler: ci}) //nolint:staticcheck // SA1019: see Server.h2.
}

// ServeHTTP serves one CONNECT stream.
func (ci *connInfo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := ci.s
	s.mu.Lock()
	s.handlers++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.handlers--
		s.mu.Unlock()
	}()

	start := time.Now()
	req := &Request{Peer: ci.peer, PeerAddr: ci.peerAddr, LocalAddr: ci.localAddr, Header: r.Header}
	var st StreamStats
	defer func() {
		if s.cfg.OnStreamEnd != nil {
			st.Duration = time.Since(start)
			s.cfg.OnStreamEnd(req, st)
		}
	}()

	if r.Method != http.MethodConnect {
		st.Status, st.Err = refuse(w, BadRequest("method must be CONNECT"))
		return
	}
	ap, err := ParseAuthority(r.Host)
	if err != nil {
		st.Status, st.Err = refuse(w, BadRequest(err.Error()))
		return
	}
	req.Authority = ap
	ctx := r.Context()
	up, err := s.cfg.Handler.Connect(ctx, req)
	if err == nil && up == nil {
		err = errors.New("handler returned no connection")
	}
	if err != nil {
		st.Status, st.Err = refuse(w, err)
		return
	}
	defer func() { _ = up.Close() }()
	// A reset stream or a closed connection cancels ctx: unblock the upstream reads.
	stop := context.AfterFunc(ctx, func() { _ = up.Close() })
	defer stop()

	st.Status = http.StatusOK
	w.WriteHeader(http.StatusOK)
	flush := flusherOf(w)
	if err := flush(); err != nil {
		st.Err = err
		return
	}
	st.Received, st.Sent, st.Err = serveTunnel(w, flush, r.Body, up)
	if st.Err != nil {
		// The upstream or the client failed: reset the stream (RST_STREAM) rather than end it cleanly,
		// so the client does not take a truncated stream for a complete one.
		panic(http.ErrAbortHandler)
	}
}

// serveTunnel relays a CONNECT stream: the request body to up (client END_STREAM => CloseWrite on
// up) and up to the response (each write flushed).
//
// The upstream's EOF ends the response: with x/net/http2 the only way to send END_STREAM is to return
// from the handler, and returning also ends the request body (the server sends RST_STREAM(NO_ERROR)
// after the complete response, RFC 9113 section 8.1). So once the upstream half-closed, bytes the
// client sends afterwards are not delivered; everything it sent before the upstream's FIN is.
func serveTunnel(w io.Writer, flush func() error, body io.ReadCloser, up net.Conn) (received, sent int64, err error) {
	var bodyClosed atomic.Bool
	errc := make(chan error, 1)
	go func() {
		n, err := copyBuffered(up, body, nil)
		received = n
		switch {
		case err == nil:
			err = CloseWrite(up)
		case bodyClosed.Load():
			err = nil // ended below because the response ended.
		default:
			_ = up.Close() // the client reset: abort the upstream.
		}
		errc <- err
	}()
	sent, errSent := copyBuffered(w, up, flush)
	if errSent != nil {
		_ = up.Close()
	}
	bodyClosed.Store(true)
	_ = body.Close() // ends the request direction if it still runs.
	errRecv := <-errc
	return received, sent, firstRealError(errSent, errRecv)
}

// refuse answers a non-200 status for err, with its reason as a short text body.
func refuse(w http.ResponseWriter, err error) (int, error) {
	status := StatusOf(err)
	reason := "upstream unavailable"
	var he *Error
	if errors.As(err, &he) {
		reason = he.Reason
	}
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, reason)
	return status, err
}

// maxReasonLen bounds the reason text sent with a refusal.
const maxReasonLen = 256

// flusherOf returns the function that pushes what was written to w onto the wire.
func flusherOf(w http.ResponseWriter) func() error {
	if f, ok := w.(interface{ FlushError() error }); ok {
		return f.FlushError
	}
	if f, ok := w.(http.Flusher); ok {
		return func() error { f.Flush(); return nil }
	}
	return func() error { return nil }
}

// Shutdown stops accepting connections, sends GOAWAY on every connection and waits until their
// streams ended and they closed. If ctx ends first, it closes everything (see [Server.Close]) and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.startClosing()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// GOAWAY on every connection being served. Repeated because a connection whose handshake was
		// finishing may register only after the previous round; per connection it happens once.
		_ = s.hs.Shutdown(context.Background())
		if s.idle() {
			return nil
		}
		select {
		case <-ctx.Done():
			_ = s.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close stops accepting, closes every connection at once (streams end with an error, upstream
// connections are closed) and waits for the stream handlers to return.
func (s *Server) Close() error {
	s.startClosing()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	for !s.idle() {
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (s *Server) startClosing() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close()
	}
}

func (s *Server) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) == 0 && s.handlers == 0
}

// verifyPeer verifies the peer's chain against roots and returns its identity.
func verifyPeer(cs tls.ConnectionState, roots *x509.CertPool, trustDomain string, usage x509.ExtKeyUsage) (identity.Identity, error) {
	if roots == nil {
		return identity.Identity{}, errors.New("no trust bundle")
	}
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return identity.VerifyChain(raw, roots, trustDomain, usage)
}

// addrPortOf returns the address of a TCP endpoint, IPv4-mapped addresses unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// logWriter forwards the HTTP/2 library's log lines to a logr.Logger.
type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.log.Info("HTTP/2 server", "message", msg)
	return len(p), nil
}
