// Package hbone implements HBONE, the wire between mesh proxies: HTTP/2 CONNECT tunnels over mutual
// TLS 1.3 on port 15008, wire-compatible with Istio's HBONE (ztunnel).
//
// The server side ([Server]) terminates mTLS, verifies the client's SPIFFE identity against the trust
// bundle, and hands every CONNECT stream to a [Handler] that authorizes it and dials the upstream. It
// answers 200 only after both succeeded, then relays bytes with half-close carried through.
//
// The client side ([Pool]) keeps HTTP/2 connections per (source identity, destination identity,
// destination address), at most [DefaultMaxStreamsPerConn] streams each, and returns every tunnel as a
// [net.Conn] whose CloseWrite ends the request body (END_STREAM).
//
// [Pipe] relays bytes between two connections in both directions with half-close; the proxies use it
// for every connection.
//
// Flow control: stream window 4 MiB, connection window 16 MiB (as DESIGN.md section 3), largest frame
// 64 KiB on both sides (DESIGN.md says 1 MiB: the sender keeps a buffer of the peer's frame size, up to
// 512 KiB, for the life of every stream; see [MaxFrameSize]). Idle connections are probed with PING on
// both sides.
package hbone
