package hbone

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Copy buffers. A copy starts reading into a small buffer, so that a connection that waits for data
// pins only smallBufSize per direction, and switches to a large one as soon as a read fills the small
// one (bulk transfer). It returns the large buffer when reads become small again.
const (
	smallBufSize = 2 << 10
	largeBufSize = 64 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// closeWriter is implemented by *net.TCPConn, *tls.Conn, *net.UnixConn and the tunnels of this package.
type closeWriter interface {
	CloseWrite() error
}

// CloseWrite half-closes c if it supports it (a TCP FIN, a TLS close_notify, an HTTP/2 END_STREAM),
// and closes it fully otherwise.
func CloseWrite(c io.Closer) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// Pipe relays bytes between a and b in both directions until both directions ended, then closes
// both. When one side reaches EOF, the other is half-closed (CloseWrite) and the opposite direction
// goes on. When a direction fails, both connections are closed at once so the other direction ends
// too. It returns the bytes copied from a to b, from b to a, and the first error other than EOF
// (errors caused by its own closing are not reported).
//
// Pipe uses one extra goroutine; buffers come from a pool and are only large while data flows. When b
// is a tunnel of a [Pool], the HTTP/2 stream's own body writer reads a and sends its bytes as they come:
// no extra goroutine and no copy between a and the stream.
func Pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	done := make(chan error, 1)
	finish := func(n int64, err error) {
		aToB = n
		if err != nil {
			abort()
		}
		done <- err
	}
	// Called by the HTTP/2 stream's own goroutine, which closing the tunnel waits for: abort elsewhere.
	finishStream := func(n int64, err error) {
		aToB = n
		if err != nil {
			go abort()
		}
		done <- err
	}
	if t, ok := b.(*tunnel); !ok || !t.req.attach(a, finishStream) {
		go func() { finish(relay(b, a)) }()
	}
	bToA, errBA := relay(a, b)
	if errBA != nil {
		abort()
	}
	errAB := <-done
	abort() // both directions ended: release both connections.
	return aToB, bToA, firstRealError(errAB, errBA)
}

// relay copies src to dst until EOF, then half-closes dst.
func relay(dst, src net.Conn) (int64, error) {
	n, err := copyBuffered(dst, src, nil)
	if err != nil {
		return n, err
	}
	return n, CloseWrite(dst)
}

// firstRealError returns the first error that is not a consequence of closing the connections.
func firstRealError(errs ...error) error {
	for _, err := range errs {
		if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
			return err
		}
	}
	return nil
}

// copyBuffered copies src to dst until EOF (returned as nil) or an error. flush, if not nil, runs
// after every write: for HTTP/2 response writers, so interactive traffic is not held back.
func copyBuffered(dst io.Writer, src io.Reader, flush func() error) (written int64, err error) {
	small := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(small)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	for {
		buf := *small
		if large != nil {
			buf = *large
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if nw < 0 || nw > nr {
				nw, werr = 0, errors.New("invalid write result")
			}
			written += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr == nil && flush != nil {
				werr = flush()
			}
			if werr != nil {
				return written, werr
			}
			switch {
			case large == nil && nr == len(buf):
				large = largeBufs.Get().(*[]byte)
			case large != nil && nr < len(buf)/16:
				largeBufs.Put(large)
				large = nil
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
	}
}
