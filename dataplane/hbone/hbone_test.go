package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

func TestEchoAndRequestMetadata(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	var (
		mu  sync.Mutex
		got *Request
	)
	srv := startServer(t, signer, func(c *ServerConfig) {
		c.Handler = HandlerFunc(func(ctx context.Context, req *Request) (net.Conn, error) {
			mu.Lock()
			got = req
			mu.Unlock()
			return dialHandler(ctx, req)
		})
	})
	pool := newTestPool(t, signer, nil)

	hdr := http.Header{}
	hdr.Set("Forwarded", "for=10.0.0.9")
	hdr.Set("Baggage", "k8s.namespace.name=client-ns")
	hdr.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	c, err := pool.Connect(context.Background(), srv.key(), upstream, hdr)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()

	for _, msg := range []string{"a", "hello", string(bytes.Repeat([]byte("x"), 100_000))} {
		_, err = c.Write([]byte(msg))
		g.Expect(err).NotTo(HaveOccurred())
		buf := make([]byte, len(msg))
		_, err = io.ReadFull(c, buf)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(buf)).To(Equal(msg))
	}
	g.Expect(c.RemoteAddr().String()).To(Equal(upstream.String()))

	mu.Lock()
	defer mu.Unlock()
	g.Expect(got.Authority).To(Equal(upstream))
	g.Expect(got.Peer).To(Equal(clientID))
	g.Expect(got.LocalAddr).To(Equal(srv.addr))
	g.Expect(got.PeerAddr.Addr()).To(Equal(netip.MustParseAddr("127.0.0.1")))
	g.Expect(got.Header.Get("Forwarded")).To(Equal("for=10.0.0.9"))
	g.Expect(got.Header.Get("Baggage")).To(Equal("k8s.namespace.name=client-ns"))
	g.Expect(got.Header.Get("Traceparent")).To(HavePrefix("00-0af7"))
}

func TestLargeTransferIntegrity(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)

	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()

	const size = 64 << 20
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for left := size; left > 0; left -= len(buf) {
			_, _ = rand.Read(buf)
			sent.Write(buf)
			if _, err := c.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- CloseWrite(c)
	}()
	received := sha256.New()
	n, err := io.Copy(received, c) // until the upstream echoed everything and half-closed.
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(<-errc).To(Succeed())
	g.Expect(n).To(BeEquivalentTo(size))
	g.Expect(received.Sum(nil)).To(Equal(sent.Sum(nil)))
}

func TestHalfCloseFromClient(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstreamSaw := make(chan string, 1)
	upstream := startUpstream(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c) // until the client's END_STREAM arrives as FIN
		upstreamSaw <- string(b)
		_, _ = c.Write([]byte("reply after your EOF"))
		_ = c.CloseWrite()
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)

	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	_, err = c.Write([]byte("request"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(CloseWrite(c)).To(Succeed())
	g.Eventually(upstreamSaw).Should(Receive(Equal("request")))
	b, err := io.ReadAll(c)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(Equal("reply after your EOF"))
}

// TestHalfCloseFromUpstream: the upstream's FIN ends the response (END_STREAM), the client reads
// everything then EOF. x/net/http2's server cannot stay half-closed-local: it resets the request side
// with RST_STREAM(NO_ERROR) (see serveTunnel), so the client's later writes fail cleanly instead of
// reaching the upstream.
func TestHalfCloseFromUpstream(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstreamGot := make(chan string, 1)
	upstream := startUpstream(t, func(c *net.TCPConn) {
		b := make([]byte, len("early"))
		_, _ = io.ReadFull(c, b)
		_, _ = c.Write([]byte("banner"))
		_ = c.CloseWrite()
		rest, _ := io.ReadAll(c)
		upstreamGot <- string(b) + string(rest)
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)

	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close()
	_, err = c.Write([]byte("early"))
	g.Expect(err).NotTo(HaveOccurred())
	b, err := io.ReadAll(c) // EOF: the upstream half-closed.
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(Equal("banner"))
	g.Eventually(upstreamGot).Should(Receive(Equal("early")))
	g.Eventually(func() error {
		_, err := c.Write([]byte("late"))
		return err
	}).Should(MatchError(net.ErrClosed))
}
