package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestPipeHalfCloseBothWays(t *testing.T) {
	g := NewWithT(t)
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	type result struct {
		aToB, bToA int64
		err        error
	}
	done := make(chan result, 1)
	go func() {
		ab, ba, err := Pipe(a, b)
		done <- result{ab, ba, err}
	}()

	_, err := client.Write([]byte("request"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(client.CloseWrite()).To(Succeed())
	got, err := io.ReadAll(server) // EOF carried through
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(got)).To(Equal("request"))

	big := make([]byte, 1<<20) // switches to the large buffer
	_, err = server.Write(big)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = server.Write([]byte("tail"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(server.CloseWrite()).To(Succeed())
	got, err = io.ReadAll(client)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(HaveLen(len(big) + 4))

	var r result
	g.Eventually(done).Should(Receive(&r))
	g.Expect(r.err).NotTo(HaveOccurred())
	g.Expect(r.aToB).To(BeEquivalentTo(len("request")))
	g.Expect(r.bToA).To(BeEquivalentTo(len(big) + 4))
}

func TestPipeResetClosesBoth(t *testing.T) {
	g := NewWithT(t)
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Pipe(a, b)
		done <- err
	}()
	_, err := client.Write([]byte("x"))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = io.ReadFull(server, make([]byte, 1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(server.SetLinger(0)).To(Succeed())
	g.Expect(server.Close()).To(Succeed()) // RST towards b
	g.Eventually(done).Should(Receive(HaveOccurred()))
	// a was closed: the client sees the end instead of hanging.
	g.Expect(client.SetReadDeadline(time.Now().Add(10 * time.Second))).To(Succeed())
	_, err = io.ReadAll(client)
	g.Expect(errors.Is(err, os.ErrDeadlineExceeded)).To(BeFalse())
}

// TestPipeIntoTunnel: with a tunnel as b, the stream's body writer reads a directly. Bytes, both
// half-closes and the counts come through as with two TCP connections.
func TestPipeIntoTunnel(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstream := startUpstream(t, echo)
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	client, a := tcpPair(t)
	tun, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	type result struct {
		aToB, bToA int64
		err        error
	}
	done := make(chan result, 1)
	go func() {
		ab, ba, err := Pipe(a, tun)
		done <- result{ab, ba, err}
	}()

	big := make([]byte, 3<<20+17)
	for i := range big {
		big[i] = byte(i * 7)
	}
	go func() {
		_, _ = client.Write(big)
		_ = client.CloseWrite()
	}()
	got, err := io.ReadAll(client) // the echo, then EOF once the upstream half-closed
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(big))

	var r result
	g.Eventually(done, 10*time.Second).Should(Receive(&r))
	g.Expect(r.err).NotTo(HaveOccurred())
	g.Expect(r.aToB).To(BeEquivalentTo(len(big)))
	g.Expect(r.bToA).To(BeEquivalentTo(len(big)))
}

// TestPipeIntoTunnelClientReset: a reset of a while the stream's body writer reads it ends the Pipe
// with an error and closes the tunnel.
func TestPipeIntoTunnelClientReset(t *testing.T) {
	g := NewWithT(t)
	signer := newSigner(t, trustDomain)
	upstreamDone := make(chan struct{})
	upstream := startUpstream(t, func(c *net.TCPConn) {
		defer close(upstreamDone)
		echo(c)
	})
	srv := startServer(t, signer, nil)
	pool := newTestPool(t, signer, nil)
	client, a := tcpPair(t)
	tun, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	g.Expect(err).NotTo(HaveOccurred())
	done := make(chan error, 1)
	go func() {
		_, _, err := Pipe(a, tun)
		done <- err
	}()
	_, err = client.Write([]byte("x"))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = io.ReadFull(client, make([]byte, 1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(client.SetLinger(0)).To(Succeed())
	g.Expect(client.Close()).To(Succeed()) // RST towards a
	g.Eventually(done, 10*time.Second).Should(Receive(HaveOccurred()))
	g.Eventually(upstreamDone, 10*time.Second).Should(BeClosed(), "the upstream connection ended")
	// The tunnel was closed: writing to it fails.
	_, err = tun.Write([]byte("late"))
	g.Expect(err).To(HaveOccurred())
}
