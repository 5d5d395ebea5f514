package hbone

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// reqBody is a tunnel's request body, read by x/net's body writer goroutine of the stream. Bytes come
// from the tunnel's Write calls, handed over as io.Pipe does, or, once a source is attached (see
// [reqBody.attach], used by [Pipe]), straight from that source: x/net's goroutine then reads the source
// into its frame buffer itself, without a copy and without a goroutine hand-off per write, and the
// relay needs no goroutine of its own for that direction.
type reqBody struct {
	writes   chan []byte   // a Write's remaining bytes, to Read
	taken    chan int      // how many of them Read took
	attached chan struct{} // closed when a source is attached
	done     chan struct{} // closed by closeWithError

	mu  sync.Mutex
	src *bodySource // the attached source
	err error       // why done; io.EOF ends the body cleanly (END_STREAM)

	cur *bodySource // the source as seen by the reading goroutine
}

// bodySource is a reader attached to a body; finish runs once, when it reached EOF (err nil), failed, or
// the body was closed first.
type bodySource struct {
	r      io.Reader
	n      atomic.Int64
	ended  atomic.Bool
	finish func(n int64, err error)
}

// end calls finish unless it ran already. finish may close the tunnel, which ends the source again:
// hence no sync.Once, whose Do must not be re-entered.
func (s *bodySource) end(err error) {
	if s.ended.CompareAndSwap(false, true) {
		s.finish(s.n.Load(), err)
	}
}

func newReqBody() *reqBody {
	return &reqBody{
		writes:   make(chan []byte),
		taken:    make(chan int),
		attached: make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// Read is called by x/net's body writer goroutine only.
func (b *reqBody) Read(p []byte) (int, error) {
	if b.cur == nil {
		select {
		case w := <-b.writes:
			n := copy(p, w)
			b.taken <- n
			return n, nil
		case <-b.attached:
			b.mu.Lock()
			b.cur = b.src
			b.mu.Unlock()
		case <-b.done:
			return 0, b.doneErr()
		}
	}
	select {
	case <-b.done:
		return 0, b.doneErr()
	default:
	}
	n, err := b.cur.r.Read(p)
	b.cur.n.Add(int64(n))
	if err != nil {
		if err == io.EOF {
			b.cur.end(nil)
		} else {
			b.cur.end(err)
		}
		// EOF ends the request body (END_STREAM); another error aborts the stream.
		return n, err
	}
	return n, nil
}

func (b *reqBody) doneErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Write hands p to Read and returns once all of it was taken, or the body was closed.
func (b *reqBody) Write(p []byte) (int, error) {
	b.mu.Lock()
	attached := b.src != nil
	b.mu.Unlock()
	if attached {
		return 0, errWriteAttached
	}
	written := 0
	for len(p) > 0 {
		select {
		case b.writes <- p:
			n := <-b.taken
			written += n
			p = p[n:]
		case <-b.done:
			return written, net.ErrClosed
		}
	}
	return written, nil
}

// errWriteAttached is returned by Write on a tunnel whose request direction is fed by Pipe.
var errWriteAttached = &net.OpError{Op: "write", Net: "hbone", Err: io.ErrClosedPipe}

// attach makes r the source of the body: Read reads r until EOF or an error, then finish is called
// with the bytes read and the error (nil for EOF). If the body is closed first, finish gets
// net.ErrClosed (r is not read any more; a Read already blocked on it still returns). It reports
// false, without calling finish, if the body already had a source or was closed.
func (b *reqBody) attach(r io.Reader, finish func(n int64, err error)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.src != nil || b.err != nil {
		return false
	}
	b.src = &bodySource{r: r, finish: finish}
	close(b.attached)
	return true
}

// closeWithError ends the body: Read returns err (io.EOF: the body is complete), Write fails. The
// first call wins.
func (b *reqBody) closeWithError(err error) {
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return
	}
	b.err = err
	src := b.src
	close(b.done)
	b.mu.Unlock()
	if src != nil {
		src.end(net.ErrClosed)
	}
}

// Close is called by x/net when the stream ends.
func (b *reqBody) Close() error {
	b.closeWithError(net.ErrClosed)
	return nil
}
