package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ioTimeout bounds one dial, one exchange, and the wait for the sink's byte count.
const ioTimeout = 10 * time.Second

// Dial connects to dst from src (zero: any source address). The source port is chosen at connect
// time (IP_BIND_ADDRESS_NO_PORT), as for an unbound socket, so that a client bound to an address can
// open as many connections as an unbound one.
func Dial(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: ioTimeout}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Result is what a client run reports (one JSON line on the client process's stdout). Only the fields
// of its Test are set.
type Result struct {
	Test string `json:"test"`
	// Throughput: bytes the server counted and the time from the first write to the count's arrival.
	Bytes   int64   `json:"bytes,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
	// Latency: round trips measured and their percentiles, in microseconds.
	Samples int     `json:"samples,omitempty"`
	P50us   float64 `json:"p50us,omitempty"`
	P99us   float64 `json:"p99us,omitempty"`
	MeanUs  float64 `json:"meanUs,omitempty"`
	// Connection rate: connections completed and failed.
	Conns  int64  `json:"conns,omitempty"`
	Errors int64  `json:"errors,omitempty"`
	Error  string `json:"error,omitempty"` // the first failure
	// Hold: connections open now.
	Open int `json:"open,omitempty"`
}

// Gbps is the throughput in Gbit/s.
func (r Result) Gbps() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Seconds / 1e9
}

// PerSecond is the connection rate.
func (r Result) PerSecond() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Conns) / r.Seconds
}

// Throughput sends up to maxBytes, for at most maxDuration, over one connection to a sink (see
// [SinkMode]), and reports what the server counted once it saw the end of the stream.
func Throughput(ctx context.Context, src netip.Addr, dst netip.AddrPort, maxBytes int64, maxDuration time.Duration) (Result, error) {
	res := Result{Test: "throughput"}
	c, err := Dial(ctx, src, dst)
	if err != nil {
		return res, err
	}
	defer func() { _ = c.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	buf := make([]byte, sinkBufSize)
	start := time.Now()
	deadline := start.Add(maxDuration)
	_ = c.SetDeadline(deadline.Add(ioTimeout))
	if _, err := c.Write([]byte{SinkMode}); err != nil {
		return res, err
	}
	var sent int64
	for sent < maxBytes && time.Now().Before(deadline) {
		n, err := c.Write(buf[:min(int64(len(buf)), maxBytes-sent)])
		sent += int64(n)
		if err != nil {
			return res, fmt.Errorf("after %d bytes: %w", sent, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return res, err
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	var count [8]byte
	if _, err := io.ReadFull(c, count[:]); err != nil {
		return res, fmt.Errorf("read the byte count after sending %d bytes: %w", sent, err)
	}
	res.Seconds = time.Since(start).Seconds()
	res.Bytes = int64(binary.BigEndian.Uint64(count[:])) // #nosec G115 -- the server counted at most what we sent
	if res.Bytes != sent {
		return res, fmt.Errorf("the server counted %d bytes, %d were sent", res.Bytes, sent)
	}
	return res, nil
}

// Latency measures count 1-byte round trips (after warmup unmeasured ones) over one connection to an
// echo server, for at most maxDuration.
func Latency(ctx context.Context, src netip.Addr, dst netip.AddrPort, warmup, count int, maxDuration time.Duration) (Result, error) {
	res := Result{Test: "latency"}
	c, err := Dial(ctx, src, dst)
	if err != nil {
		return res, err
	}
	defer func() { _ = c.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	deadline := time.Now().Add(maxDuration)
	_ = c.SetDeadline(deadline.Add(ioTimeout))
	b := []byte{'x'}
	samples := make([]time.Duration, 0, count)
	for i := 0; i < warmup+count && time.Now().Before(deadline); i++ {
		t0 := time.Now()
		if _, err := c.Write(b); err != nil {
			return res, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return res, err
		}
		if i >= warmup {
			samples = append(samples, time.Since(t0))
		}
	}
	if len(samples) == 0 {
		return res, errors.New("no round trip finished in time")
	}
	res.Samples = len(samples)
	res.P50us = micros(Percentile(samples, 50))
	res.P99us = micros(Percentile(samples, 99))
	res.MeanUs = micros(Mean(samples))
	return res, nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// ConnRate runs clients concurrent loops for duration (and at most maxConns connections in all), each
// connecting, sending one byte, reading its echo and closing, and reports the connections completed.
func ConnRate(ctx context.Context, src netip.Addr, dst netip.AddrPort, clients int, duration time.Duration, maxConns int64) (Result, error) {
	res := Result{Test: "connrate"}
	var started, done, failed atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			b := make([]byte, 1)
			for time.Now().Before(deadline) && ctx.Err() == nil && started.Add(1) <= maxConns {
				if err := exchangeOnce(ctx, src, dst, b); err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
					time.Sleep(time.Millisecond) // a failing target must not turn this into a busy loop
					continue
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Conns, res.Errors = done.Load(), failed.Load()
	if firstErr != nil {
		res.Error = firstErr.Error()
	}
	if res.Conns == 0 {
		return res, fmt.Errorf("no connection succeeded: %v", firstErr)
	}
	return res, nil
}

func exchangeOnce(ctx context.Context, src netip.Addr, dst netip.AddrPort, b []byte) error {
	c, err := Dial(ctx, src, dst)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	b[0] = 'x'
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err = io.ReadFull(c, b)
	return err
}

// Hold opens connections to an echo server, each checked with a 1-byte round trip, and keeps them
// open and idle: for every entry of steps it opens connections until that many are open (each step
// within stepTimeout), then calls reached with the number open; reached returns when the next step may
// begin. All connections are closed when Hold returns.
func Hold(ctx context.Context, src netip.Addr, dst netip.AddrPort, steps []int, stepTimeout time.Duration, reached func(open int) error) error {
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	const workers = 16
	for _, target := range steps {
		sctx, cancel := context.WithTimeout(ctx, stepTimeout)
		var todo atomic.Int64
		todo.Store(int64(target - len(conns)))
		var firstErr error
		var once sync.Once
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				b := make([]byte, 1)
				for sctx.Err() == nil && todo.Add(-1) >= 0 {
					c, err := openChecked(sctx, src, dst, b)
					if err != nil {
						once.Do(func() { firstErr = err })
						cancel()
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		cancel()
		if firstErr == nil && len(conns) < target {
			firstErr = fmt.Errorf("only %d of %d connections opened in %s", len(conns), target, stepTimeout)
		}
		if firstErr != nil {
			return fmt.Errorf("open connection %d: %w", len(conns)+1, firstErr)
		}
		if err := reached(len(conns)); err != nil {
			return err
		}
	}
	return nil
}

func openChecked(ctx context.Context, src netip.Addr, dst netip.AddrPort, b []byte) (net.Conn, error) {
	c, err := Dial(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	b[0] = 'x'
	if _, err := c.Write(b); err != nil {
		_ = c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
