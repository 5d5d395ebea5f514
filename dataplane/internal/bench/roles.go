package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// SinkMode is the first byte of a connection that asks the server to discard what it receives: the
// server reads until EOF, then writes the number of bytes it read after this byte (8 bytes, big endian)
// and closes. With any other first byte the server echoes everything, that byte included, until EOF.
const SinkMode = 'T'

const (
	echoBufSize = 4 << 10
	sinkBufSize = 256 << 10
)

var (
	echoBufs = sync.Pool{New: func() any { b := make([]byte, echoBufSize); return &b }}
	sinkBufs = sync.Pool{New: func() any { b := make([]byte, sinkBufSize); return &b }}
)

// connSet tracks the connections of a server or relay so that shutdown closes them and waits for their
// goroutines.
type connSet struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// add tracks cs and reports false (and closes them) if the set is already closed.
func (s *connSet) add(cs ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	for _, c := range cs {
		s.conns[c] = struct{}{}
	}
	return true
}

func (s *connSet) remove(cs ...net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		delete(s.conns, c)
	}
}

// closeAll closes every tracked connection and waits for the handlers.
func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveLoop accepts on l until ctx ends or l fails, running handle for every connection on its own
// goroutine; it closes l and every connection before it returns.
func serveLoop(ctx context.Context, l net.Listener, set *connSet, handle func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	defer set.closeAll()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !set.add(c) {
			return nil
		}
		set.wg.Add(1)
		go func() {
			defer set.wg.Done()
			defer set.remove(c)
			defer func() { _ = c.Close() }()
			handle(c)
		}()
	}
}

// Serve runs the benchmark server on l (see [SinkMode]) until ctx ends.
func Serve(ctx context.Context, l net.Listener) error {
	return serveLoop(ctx, l, &connSet{}, serveConn)
}

func serveConn(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	if mode[0] == SinkMode {
		buf := sinkBufs.Get().(*[]byte)
		defer sinkBufs.Put(buf)
		var n int64
		for {
			m, err := c.Read(*buf)
			n += int64(m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return
			}
		}
		var count [8]byte
		binary.BigEndian.PutUint64(count[:], uint64(n)) // #nosec G115 -- a byte count is never negative
		_, _ = c.Write(count[:])
		return
	}
	if _, err := c.Write(mode[:]); err != nil {
		return
	}
	buf := echoBufs.Get().(*[]byte)
	defer echoBufs.Put(buf)
	for {
		n, err := c.Read(*buf)
		if n > 0 {
			if _, werr := c.Write((*buf)[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Relay runs a plain TCP relay: every connection accepted on l is connected to target and the bytes are
// copied both ways with io.Copy (splice(2) between TCP sockets on Linux); an EOF is passed on as a
// half-close. It returns when ctx ends.
func Relay(ctx context.Context, l net.Listener, target string) error {
	set := &connSet{}
	var d net.Dialer
	return serveLoop(ctx, l, set, func(c net.Conn) {
		up, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return
		}
		if !set.add(up) {
			return
		}
		defer set.remove(up)
		defer func() { _ = up.Close() }()
		done := make(chan struct{})
		go func() {
			defer close(done)
			copyHalf(up, c)
		}()
		copyHalf(c, up)
		<-done
	})
}

// copyHalf copies src to dst; on EOF it half-closes dst, on an error it closes both so that the other
// direction ends too.
func copyHalf(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		_ = src.Close()
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = dst.Close()
}
