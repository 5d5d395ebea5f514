package hbone

import (
	"bytes"
	"net"
	"testing"

	. "github.com/onsi/gomega"
)

// writeLog records every Write reaching the socket.
type writeLog struct {
	net.Conn
	writes [][]byte
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

func TestBatchConnCoalescesRecordsOfOneWrite(t *testing.T) {
	g := NewWithT(t)
	log := &writeLog{}
	b := newTLSBatch(log)

	_, err := b.Write([]byte("alone")) // outside a TLS write: straight through
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(log.writes).To(HaveLen(1))

	g.Expect(b.setBatching(true)).To(Succeed())
	for _, rec := range []string{"rec1", "rec2", "rec3"} {
		_, err := b.Write([]byte(rec))
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(log.writes).To(HaveLen(1), "held until the TLS write returns")
	g.Expect(b.setBatching(false)).To(Succeed())
	g.Expect(log.writes).To(HaveLen(2))
	g.Expect(string(log.writes[1])).To(Equal("rec1rec2rec3"))

	g.Expect(b.setBatching(true)).To(Succeed())
	big := bytes.Repeat([]byte{7}, maxBatch)
	_, err = b.Write(big)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(log.writes).To(HaveLen(3), "a full batch is written at once")
	g.Expect(b.setBatching(false)).To(Succeed())
	g.Expect(log.writes).To(HaveLen(3), "nothing left to write")
}
