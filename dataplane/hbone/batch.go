package hbone

import (
	"crypto/tls"
	"net"
	"sync"
)

// maxBatch bounds the bytes of TLS records held before they are written.
const maxBatch = 256 << 10

// batchConn sits under a tls.Conn: while a write of the TLS connection above runs, the records it
// produces (one per 16 KiB of plaintext) are collected and written with one write(2) when it returns,
// instead of one write(2) per record.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= maxBatch {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *batchConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

func (c *batchConn) setBatching(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = on
	if on {
		return nil
	}
	return c.flushLocked()
}

// tlsBatchConn is the TLS connection HTTP/2 uses: every Write leaves in as few write(2) calls as
// possible, and nothing stays buffered once Write returned.
type tlsBatchConn struct {
	*tls.Conn
	raw *batchConn
	wmu sync.Mutex
}

// newTLSBatch returns the batching layer to run TLS on, over raw.
func newTLSBatch(raw net.Conn) *batchConn { return &batchConn{Conn: raw} }

func (c *tlsBatchConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.raw.setBatching(true)
	n, err := c.Conn.Write(p)
	if ferr := c.raw.setBatching(false); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}
