package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// hold reads until EOF: an upstream that keeps connections open.
func hold(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) }

func TestPoolConcurrentConnectsShareHandshakes(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, hold)
	var (
		mu      sync.Mutex
		perConn = map[netip.AddrPort]int{}
	)
	srv := startServer(t, signer, func(c *ServerConfig) {
		c.Handler = HandlerFunc(func(ctx context.Context, req *Request) (net.Conn, error) {
			mu.Lock()
			perConn[req.PeerAddr]++
			mu.Unlock()
			return dialHandler(ctx, req)
		})
	})
	pool := newTestPool(t, signer, nil)

	const n = 300
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			conns[i], errs[i] = pool.Connect(context.Background(), srv.key(), upstream, nil)
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		g.Expect(errs[i]).NotTo(HaveOccurred())
		defer conns[i].Close()
	}
	// ceil(300/100) = 3 connections; allow a little slack for a connection lost and redialed.
	g.Expect(srv.l.accepted.Load()).To(BeNumerically("<=", 5))
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, c := range perConn {
		g.Expect(c).To(BeNumerically("<=", DefaultMaxStreamsPerConn))
		total += c
	}
	g.Expect(total).To(Equal(n))
}

func TestPoolReusesConnection(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	for range 20 {
		c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(c.Close()).To(Succeed())
	}
	g.Expect(srv.l.accepted.Load()).To(BeEquivalentTo(1))
}

func TestPoolIdleRelease(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, func(c *PoolConfig) { c.IdleTimeout = 100 * time.Millisecond })

	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	// Not idle while a stream is open.
	g.Consistently(srv.l.open.Load, 300*time.Millisecond, 20*time.Millisecond).Should(BeEquivalentTo(1))
	g.Expect(c.Close()).To(Succeed())
	g.Eventually(srv.l.open.Load, 10*time.Second, 10*time.Millisecond).Should(BeZero())
	pool.mu.Lock()
	g.Expect(pool.keys).To(BeEmpty())
	pool.mu.Unlock()

	// The next Connect dials again.
	c, err = pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	_ = c.Close()
	g.Expect(srv.l.accepted.Load()).To(BeEquivalentTo(2))
}

func TestPoolConnectContextCanceled(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	// A listener that never answers the handshake.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer ln.Close()
	pool := newTestPool(t, signer, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	key := PoolKey{Source: clientID, Destination: serverID, Address: ln.Addr().(*net.TCPAddr).AddrPort()}
	_, err = pool.Connect(ctx, key, mustAddrPort("10.0.0.1", 80), nil)
	g.Expect(err).To(MatchError(context.DeadlineExceeded))
	g.Expect(pool.Close()).To(Succeed()) // aborts the dial still in flight.
	_, err = pool.Connect(context.Background(), key, mustAddrPort("10.0.0.1", 80), nil)
	g.Expect(err).To(MatchError(ErrPoolClosed))
}

// TestShutdownDrainsAndGoAway: Shutdown sends GOAWAY and refuses new connections, the open stream
// goes on until it ends, and the pool moves new streams to a fresh connection.
func TestShutdownDrainsAndGoAway(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv1 := startServer(t, signer, nil)
	srv2 := startServer(t, signer, nil)
	var target atomic.Pointer[string]
	a1, a2 := srv1.addr.String(), srv2.addr.String()
	target.Store(&a1)
	pool := newTestPool(t, signer, func(c *PoolConfig) {
		c.Dial = func(ctx context.Context, _ PoolKey) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", *target.Load())
		}
	})
	key := srv1.key()
	c1, err := pool.Connect(context.Background(), key, upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c1.Close()
	echoOnce(g, c1, "before")

	shutdown := make(chan error, 1)
	go func() { shutdown <- srv1.Shutdown(context.Background()) }()
	g.Eventually(func() bool { return pool.goneAway(key) }).Should(BeTrue(), "the client saw GOAWAY")

	// New connections are refused; the open stream still flows.
	_, err = net.Dial("tcp", a1)
	g.Expect(err).To(HaveOccurred())
	_, err = pool.Connect(context.Background(), key, upstream, nil)
	g.Expect(err).To(HaveOccurred())
	echoOnce(g, c1, "during drain")
	g.Consistently(shutdown, 200*time.Millisecond).ShouldNot(Receive())

	// The next stream goes to a new connection (here a second server behind the same key).
	target.Store(&a2)
	c2, err := pool.Connect(context.Background(), key, upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	echoOnce(g, c2, "new")
	_ = c2.Close()
	g.Expect(srv2.l.accepted.Load()).To(BeEquivalentTo(1))

	// The drained stream ends cleanly; Shutdown returns.
	g.Expect(CloseWrite(c1)).To(Succeed())
	_, err = io.ReadAll(c1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c1.Close()).To(Succeed())
	g.Eventually(shutdown, 10*time.Second).Should(Receive(BeNil()))
	g.Expect(srv1.l.open.Load()).To(BeZero())
}

func TestShutdownDeadlineClosesStreams(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstreamClosed := make(chan struct{})
	upstream := startUpstream(t, func(c *net.TCPConn) {
		hold(c)
		close(upstreamClosed)
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	g.Expect(srv.Shutdown(ctx)).To(MatchError(context.DeadlineExceeded))
	_, err = c.Read(make([]byte, 1))
	g.Expect(err).To(HaveOccurred())
	g.Eventually(upstreamClosed).Should(BeClosed())
	g.Expect(srv.l.open.Load()).To(BeZero())
}

func TestHandshakeStallTimesOut(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	srv := startServer(t, signer, func(c *ServerConfig) { c.HandshakeTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", srv.addr.String())
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	g.Expect(err).To(MatchError(io.EOF)) // closed by the server, not our deadline.
	g.Eventually(srv.l.open.Load).Should(BeZero())
}

func TestClientAbortMidStream(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstreamDone := make(chan int64, 1)
	upstream := startUpstream(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		upstreamDone <- n
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	writing := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				writing <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)    // let data flow
	g.Expect(pool.Close()).To(Succeed()) // closes the TCP connection under the stream.
	g.Eventually(writing).Should(Receive(HaveOccurred()))
	g.Eventually(upstreamDone).Should(Receive(BeNumerically(">", 0)))
	_ = c.Close()

	// The server serves others.
	upstream2 := startUpstream(t, echo)
	c2, err := newTestPool(t, signer, nil).Connect(context.Background(), srv.key(), upstream2, nil)
	g.Expect(err).NotTo(HaveOccurred())
	echoOnce(g, c2, "still alive")
	_ = c2.Close()
}

func TestUpstreamReset(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("partial"))
		b := make([]byte, 1)
		_, _ = c.Read(b)
		_ = c.SetLinger(0) // RST
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	b := make([]byte, len("partial"))
	_, err = io.ReadFull(c, b)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Write([]byte("x"))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = io.ReadAll(c)
	g.Expect(err).To(HaveOccurred(), "a reset upstream is not a clean EOF")
	g.Expect(errors.Is(err, io.EOF)).To(BeFalse())

	// The pool and server carry on.
	upstream2 := startUpstream(t, echo)
	c2, err := pool.Connect(context.Background(), srv.key(), upstream2, nil)
	g.Expect(err).NotTo(HaveOccurred())
	echoOnce(g, c2, "next")
	_ = c2.Close()
}

// echoOnce writes msg and expects it back.
func echoOnce(g *WithT, c net.Conn, msg string) {
	_, err := c.Write([]byte(msg))
	g.ExpectWithOffset(1, err).NotTo(HaveOccurred())
	b := make([]byte, len(msg))
	_, err = io.ReadFull(c, b)
	g.ExpectWithOffset(1, err).NotTo(HaveOccurred())
	g.ExpectWithOffset(1, string(b)).To(Equal(msg))
}

// goneAway reports whether the pool has no usable connection for key any more.
func (p *Pool) goneAway(key PoolKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	kc := p.keys[key]
	if kc == nil {
		return true
	}
	for _, pc := range kc.conns {
		if pc.cc.CanTakeNewRequest() {
			return false
		}
	}
	return true
}
