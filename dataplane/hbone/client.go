package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Client defaults.
const (
	// DefaultMaxStreamsPerConn is how many streams one pooled HTTP/2 connection carries at most.
	DefaultMaxStreamsPerConn = 100
	// DefaultPoolIdleTimeout is how long a pooled connection without streams is kept.
	DefaultPoolIdleTimeout = 60 * time.Second
	// DefaultDialTimeout bounds dialing and the TLS handshake of a new pooled connection.
	DefaultDialTimeout = 10 * time.Second
	// maxConnectAttempts bounds how often Connect retries on a fresh connection when the one it
	// picked went away (GOAWAY, closed) before the server answered.
	maxConnectAttempts = 3
)

// PoolKey identifies the HTTP/2 connections that may carry a stream: the tunnel carries the Source
// identity (the source workload's own certificate) to the Destination identity at Address. Origin is the
// address of the source workload the tunnel is opened for: connections are never shared between two pods,
// even of the same identity, because the peer sees the connection's source address. Dial receives the key
// and opens the connection from the origin (its network namespace, its address); the zero Origin means
// "any".
type PoolKey struct {
	Source      identity.Identity
	Destination identity.Identity
	Address     netip.AddrPort
	Origin      netip.Addr
}

// PoolConfig configures a [Pool]. GetClientCertificate and Roots are required.
type PoolConfig struct {
	// GetClientCertificate returns the certificate of the source workload src.
	GetClientCertificate func(src identity.Identity) (*tls.Certificate, error)
	// Roots returns the trust bundle; it is called for every handshake.
	Roots func() *x509.CertPool
	// Dial opens the TCP connection to key.Address; default a net.Dialer. The node proxy passes one
	// that dials from the origin pod's network namespace and address, and sets SO_MARK.
	Dial func(ctx context.Context, key PoolKey) (net.Conn, error)
	// MaxStreamsPerConn; default [DefaultMaxStreamsPerConn].
	MaxStreamsPerConn int
	// IdleTimeout: a connection without streams for this long is closed; default
	// [DefaultPoolIdleTimeout].
	IdleTimeout time.Duration
	// DialTimeout bounds dial plus handshake; default [DefaultDialTimeout].
	DialTimeout time.Duration
	// KeepAliveInterval and KeepAliveTimeout: as in [ServerConfig].
	KeepAliveInterval, KeepAliveTimeout time.Duration
	// MaxHeaderBytes limits the response header block; default [DefaultMaxHeaderBytes].
	MaxHeaderBytes int
	// Logger receives one line per failed dial (V(1)).
	Logger logr.Logger
}

// Pool opens CONNECT tunnels over pooled HTTP/2 connections. Create it with [NewPool].
type Pool struct {
	cfg    PoolConfig
	log    logr.Logger
	t      *http2.Transport //nolint:staticcheck // SA1019: x/net/http2 is the chosen HTTP/2 implementation.
	ctx    context.Context  // ends on Close: aborts dials.
	cancel context.CancelFunc
	dials  sync.WaitGroup

	mu     sync.Mutex
	closed bool
	keys   map[PoolKey]*keyConns
}

// keyConns holds one key's connections and dials in flight. Guarded by Pool.mu.
type keyConns struct {
	conns []*poolConn
	dials []*dialCall
}

// dialCall is a connection being dialed; callers that found every connection full wait for it.
type dialCall struct {
	done     chan struct{}
	reserved int // streams promised to waiters
	pc       *poolConn
	err      error
}

// poolConn is one HTTP/2 connection. streams and the other fields are guarded by Pool.mu.
type poolConn struct {
	key     PoolKey
	cc      *http2.ClientConn //nolint:staticcheck // SA1019: see Pool.t.
	raw     net.Conn
	streams int
	removed bool // out of keyConns.conns; closed when streams reaches 0
	idle    *time.Timer
}

// NewPool returns a pool for cfg. It panics if a required field is missing.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.GetClientCertificate == nil || cfg.Roots == nil {
		panic("hbone.NewPool: GetClientCertificate and Roots are required")
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, key PoolKey) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", key.Address.String())
		}
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultPoolIdleTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	cfg.KeepAliveInterval, cfg.KeepAliveTimeout = keepAlive(cfg.KeepAliveInterval, cfg.KeepAliveTimeout)

	// x/net/http2's client reads its settings (windows, frame size, keep-alive) from a net/http
	// Transport; t1 is never used to send requests.
	t1 := &http.Transport{
		DisableCompression:     true,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes),
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: ConnWindow,
			MaxReceiveBufferPerStream:     StreamWindow,
			MaxReadFrameSize:              MaxFrameSize,
			SendPingTimeout:               cfg.KeepAliveInterval,
			PingTimeout:                   cfg.KeepAliveTimeout,
		},
	}
	t, err := http2.ConfigureTransports(t1) //nolint:staticcheck // SA1019: see Pool.t.
	if err != nil {
		panic(fmt.Sprintf("hbone.NewPool: configure HTTP/2: %v", err))
	}

	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{
		cfg:    cfg,
		log:    cfg.Logger.WithName("hbone-pool"),
		t:      t,
		ctx:    ctx,
		cancel: cancel,
		keys:   map[PoolKey]*keyConns{},
	}
}

// Connect opens a CONNECT stream to authority through a connection for key and returns once the
// server answered 200. Another answer is returned as an [*Error] with the status. hdr holds optional
// request headers (forwarded, baggage, traceparent); it is not modified. ctx bounds the connect
// phase only: cancelling it after Connect returned does not end the tunnel.
//
// The returned conn's CloseWrite ends the request body (END_STREAM); Read returns io.EOF when the
// server ended the response. Close it to release the stream. Deadlines are not supported.
func (p *Pool) Connect(ctx context.Context, key PoolKey, authority netip.AddrPort, hdr http.Header) (net.Conn, error) {
	if !authority.IsValid() || authority.Port() == 0 {
		return nil, fmt.Errorf("hbone: connect: invalid authority %v", authority)
	}
	if key.Destination.IsZero() || key.Source.IsZero() || !key.Address.IsValid() {
		return nil, errors.New("hbone: connect: pool key needs a source, a destination identity and an address")
	}
	var lastErr error
	for range maxConnectAttempts {
		pc, err := p.acquire(ctx, key)
		if err != nil {
			return nil, err
		}
		c, err := p.open(ctx, pc, authority, hdr)
		if err == nil {
			return c, nil
		}
		retry := p.unusable(pc) && ctx.Err() == nil && !errors.As(err, new(*Error))
		p.release(pc)
		if !retry {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

// acquire reserves a stream on a connection for key: an open one with room, a dial in flight with
// room, or a new dial. It never holds the pool lock while dialing.
func (p *Pool) acquire(ctx context.Context, key PoolKey) (*poolConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	kc := p.keys[key]
	if kc == nil {
		kc = &keyConns{}
		p.keys[key] = kc
	}
	for i := 0; i < len(kc.conns); i++ {
		pc := kc.conns[i]
		if !pc.cc.CanTakeNewRequest() { // GOAWAY received or connection closed.
			p.removeLocked(pc)
			i--
			continue
		}
		if pc.streams < p.cfg.MaxStreamsPerConn {
			p.reserveLocked(pc)
			p.mu.Unlock()
			return pc, nil
		}
	}
	var d *dialCall
	for _, dc := range kc.dials {
		if dc.reserved < p.cfg.MaxStreamsPerConn {
			d = dc
			break
		}
	}
	if d == nil {
		d = &dialCall{done: make(chan struct{})}
		kc.dials = append(kc.dials, d)
		p.dials.Add(1)
		go p.dial(key, d)
	}
	d.reserved++
	p.mu.Unlock()

	select {
	case <-d.done:
		return d.pc, d.err // the dial transferred our reservation to d.pc.
	case <-ctx.Done():
		p.mu.Lock()
		select {
		case <-d.done:
			if d.pc != nil {
				p.releaseLocked(d.pc)
			}
		default:
			d.reserved--
		}
		p.mu.Unlock()
		return nil, ctx.Err()
	}
}

// dial opens a connection for key, adds it to the pool with the streams reserved on d, and wakes
// d's waiters. It runs on its own goroutine, so that one waiter giving up does not fail the others.
func (p *Pool) dial(key PoolKey, d *dialCall) {
	defer p.dials.Done()
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.DialTimeout)
	defer cancel()
	pc, err := p.newConn(ctx, key)
	if err != nil {
		p.log.V(1).Info("HBONE dial failed", "address", key.Address.String(), "destination", key.Destination.String(), "error", err.Error())
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	kc := p.keys[key]
	if kc != nil {
		for i, dc := range kc.dials {
			if dc == d {
				kc.dials = append(kc.dials[:i], kc.dials[i+1:]...)
				break
			}
		}
	}
	if err == nil && p.closed {
		_ = pc.cc.Close()
		pc, err = nil, ErrPoolClosed
	}
	if err != nil {
		d.err = err
		if kc != nil && len(kc.conns) == 0 && len(kc.dials) == 0 {
			delete(p.keys, key)
		}
		close(d.done)
		return
	}
	if kc == nil { // cannot happen: keys with dials in flight stay.
		kc = &keyConns{}
		p.keys[key] = kc
	}
	kc.conns = append(kc.conns, pc)
	pc.streams = d.reserved
	if pc.streams == 0 {
		pc.idle.Reset(p.cfg.IdleTimeout)
	}
	d.pc = pc
	close(d.done)
}

// newConn dials, handshakes and starts HTTP/2 for key.
func (p *Pool) newConn(ctx context.Context, key PoolKey) (*poolConn, error) {
	raw, err := p.cfg.Dial(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.Address, err)
	}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{http2.NextProtoTLS},
		// SPIFFE identities have no host names: the chain and the identity are checked below.
		InsecureSkipVerify: true, //nolint:gosec // G402: VerifyConnection verifies chain and identity.
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := verifyPeer(cs, p.cfg.Roots(), key.Destination.TrustDomain, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != key.Destination {
				return fmt.Errorf("server identity %s is not the expected %s", id, key.Destination)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.cfg.GetClientCertificate(key.Source)
		},
	}
	batch := newTLSBatch(raw)
	tc := tls.Client(batch, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", key.Address, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
		_ = raw.Close()
		return nil, fmt.Errorf("hbone: %s did not negotiate h2", key.Address)
	}
	cc, err := p.t.NewClientConn(&tlsBatchConn{Conn: tc, raw: batch}) //nolint:staticcheck // SA1019: see Pool.t; we pool connections ourselves.
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("hbone: start HTTP/2 with %s: %w", key.Address, err)
	}
	pc := &poolConn{key: key, cc: cc, raw: raw}
	pc.idle = time.AfterFunc(time.Hour, func() { p.expire(pc) })
	pc.idle.Stop()
	return pc, nil
}

func (p *Pool) reserveLocked(pc *poolConn) {
	if pc.streams == 0 {
		pc.idle.Stop()
	}
	pc.streams++
}

// release gives back a stream reserved by acquire.
func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	p.releaseLocked(pc)
	p.mu.Unlock()
}

func (p *Pool) releaseLocked(pc *poolConn) {
	pc.streams--
	if pc.streams > 0 {
		return
	}
	if pc.removed || p.closed {
		_ = pc.cc.Close()
		return
	}
	pc.idle.Reset(p.cfg.IdleTimeout)
}

// expire closes pc if it is still without streams when its idle timer fires.
func (p *Pool) expire(pc *poolConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.streams == 0 && !pc.removed {
		p.removeLocked(pc)
	}
}

// unusable reports whether pc can take no more streams (GOAWAY received or connection lost); such a
// connection is taken out of the pool.
func (p *Pool) unusable(pc *poolConn) bool {
	if pc.cc.CanTakeNewRequest() {
		return false
	}
	p.mu.Lock()
	p.removeLocked(pc)
	p.mu.Unlock()
	return true
}

// removeLocked takes pc out of its key's list; it is closed now if it has no streams, else when the
// last one is released.
func (p *Pool) removeLocked(pc *poolConn) {
	if pc.removed {
		return
	}
	pc.removed = true
	pc.idle.Stop()
	if kc := p.keys[pc.key]; kc != nil {
		for i, c := range kc.conns {
			if c == pc {
				kc.conns = append(kc.conns[:i], kc.conns[i+1:]...)
				break
			}
		}
		if len(kc.conns) == 0 && len(kc.dials) == 0 {
			delete(p.keys, pc.key)
		}
	}
	if pc.streams == 0 {
		_ = pc.cc.Close()
	}
}

// Close closes every connection (open tunnels end with an error) and aborts the dials in flight.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var all []*poolConn
	for _, kc := range p.keys {
		all = append(all, kc.conns...)
	}
	p.keys = map[PoolKey]*keyConns{}
	for _, pc := range all {
		pc.removed = true
		pc.idle.Stop()
	}
	p.mu.Unlock()
	p.cancel()
	for _, pc := range all {
		_ = pc.cc.Close()
	}
	p.dials.Wait()
	return nil
}

// open sends the CONNECT request on pc and waits for the answer.
func (p *Pool) open(ctx context.Context, pc *poolConn, authority netip.AddrPort, hdr http.Header) (net.Conn, error) {
	if hdr == nil {
		hdr = http.Header{}
	}
	// The stream lives until the tunnel is closed, not until ctx ends: ctx only bounds the wait
	// for the answer.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	rb := newReqBody()
	host := authority.String()
	req := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: host},
		Host:          host,
		Header:        hdr,
		Body:          rb,
		ContentLength: -1,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
	}).WithContext(sctx)
	resp, err := pc.cc.RoundTrip(req)
	if !stop() && err == nil { // ctx ended while the answer arrived.
		err = ctx.Err()
		_ = resp.Body.Close()
	}
	if err != nil {
		cancel()
		rb.closeWithError(net.ErrClosed)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", host, pc.key.Address, err)
	}
	if resp.StatusCode != http.StatusOK {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonLen))
		_ = resp.Body.Close()
		rb.closeWithError(net.ErrClosed)
		cancel()
		return nil, &Error{Status: resp.StatusCode, Reason: string(reason)}
	}
	return &tunnel{
		pool:   p,
		pc:     pc,
		body:   resp.Body,
		req:    rb,
		cancel: cancel,
		local:  pc.raw.LocalAddr(),
		remote: net.TCPAddrFromAddrPort(authority),
	}, nil
}

// tunnel is the client end of a CONNECT stream.
type tunnel struct {
	pool   *Pool
	pc     *poolConn
	body   io.ReadCloser
	req    *reqBody
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr
	once   sync.Once
}

// Read reads the response body: what the upstream sent. It returns io.EOF when the upstream closed
// its side.
func (t *tunnel) Read(b []byte) (int, error) { return t.body.Read(b) }

// Write sends b in the request body. It returns when the HTTP/2 connection took it.
func (t *tunnel) Write(b []byte) (int, error) { return t.req.Write(b) }

// CloseWrite ends the request body (END_STREAM): the upstream sees EOF. Reading goes on.
func (t *tunnel) CloseWrite() error { t.req.closeWithError(io.EOF); return nil }

// Close ends both directions (with RST_STREAM if they had not ended) and releases the stream.
func (t *tunnel) Close() error {
	t.once.Do(func() {
		t.req.closeWithError(net.ErrClosed)
		_ = t.body.Close()
		t.cancel()
		t.pool.release(t.pc)
	})
	return nil
}

// LocalAddr returns the local address of the HBONE connection that carries the tunnel.
func (t *tunnel) LocalAddr() net.Addr { return t.local }

// RemoteAddr returns the tunnel's target (the CONNECT authority).
func (t *tunnel) RemoteAddr() net.Addr { return t.remote }

// errNoDeadlines is returned by the deadline methods: the HTTP/2 client cannot interrupt a single
// read or write of a stream without ending it.
var errNoDeadlines = errors.New("hbone: deadlines are not supported on tunnels")

func (t *tunnel) SetDeadline(time.Time) error      { return errNoDeadlines }
func (t *tunnel) SetReadDeadline(time.Time) error  { return errNoDeadlines }
func (t *tunnel) SetWriteDeadline(time.Time) error { return errNoDeadlines }
