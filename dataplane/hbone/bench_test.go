package hbone

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
)

// BenchmarkConnect measures new tunnels over a pooled connection: Connect, a 1-byte round trip,
// Close.
func BenchmarkConnect(b *testing.B) {
	signer := newSigner(b, trustDomain)
	upstream := startUpstream(b, echo)
	srv := startServer(b, signer, nil)
	pool := newTestPool(b, signer, nil)
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
}

// BenchmarkRoundTrip1Byte measures 1-byte round trips over one open tunnel.
func BenchmarkRoundTrip1Byte(b *testing.B) {
	signer := newSigner(b, trustDomain)
	upstream := startUpstream(b, echo)
	srv := startServer(b, signer, nil)
	pool := newTestPool(b, signer, nil)
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchRoundTrip(b, c)
}

// BenchmarkRoundTrip1ByteRelay is the baseline: the same through a plain TCP relay using Pipe.
func BenchmarkRoundTrip1ByteRelay(b *testing.B) {
	upstream := startUpstream(b, echo)
	relay := startRelay(b, upstream.String())
	c, err := net.Dial("tcp", relay)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchRoundTrip(b, c)
}

func benchRoundTrip(b *testing.B, c net.Conn) {
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkThroughput measures one tunnel's upload throughput to a discarding upstream.
func BenchmarkThroughput(b *testing.B) {
	signer := newSigner(b, trustDomain)
	upstream := startUpstream(b, hold)
	srv := startServer(b, signer, nil)
	pool := newTestPool(b, signer, nil)
	c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchUpload(b, c)
}

// BenchmarkThroughputRelay is the baseline: the same through a plain TCP relay using Pipe.
func BenchmarkThroughputRelay(b *testing.B) {
	upstream := startUpstream(b, hold)
	relay := startRelay(b, upstream.String())
	c, err := net.Dial("tcp", relay)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchUpload(b, c)
}

func benchUpload(b *testing.B, c net.Conn) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// startRelay runs a plain TCP relay to target with Pipe and returns its address.
func startRelay(b *testing.B, target string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				u, err := net.Dial("tcp", target)
				if err != nil {
					_ = c.Close()
					return
				}
				_, _, _ = Pipe(c, u)
			}()
		}
	}()
	b.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

// BenchmarkIdleTunnelMemory reports the heap and stack held per open idle tunnel, client, server and
// upstream together (all in this process), as "heap-B/tunnel" and "stack-B/tunnel".
func BenchmarkIdleTunnelMemory(b *testing.B) {
	signer := newSigner(b, trustDomain)
	upstream := startUpstream(b, hold)
	srv := startServer(b, signer, nil)
	pool := newTestPool(b, signer, nil)
	first, err := pool.Connect(context.Background(), srv.key(), upstream, nil) // dial outside the measurement
	if err != nil {
		b.Fatal(err)
	}
	defer first.Close()
	const n = DefaultMaxStreamsPerConn - 1
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.GC() // twice: empties the sync.Pools, whose buffers the previous round returned.
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := pool.Connect(context.Background(), srv.key(), upstream, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write([]byte("x")); err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/n, "heap-B/tunnel")    //nolint:gosec // G115: memory sizes fit.
		b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/n, "stack-B/tunnel") //nolint:gosec // G115: memory sizes fit.
		for _, c := range conns {
			_ = c.Close()
		}
	}
}
