package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ambient-dev/ambient-operator/dataplane/state"
)

// Mark is the SO_MARK of every connection the proxy opens, so that redirection rules (which skip marked
// packets) never capture the proxy's own traffic. It is Istio's mark, so existing host rules agree.
const Mark = 0x539

// Network gives the proxy its sockets. For a node proxy, each local workload has its own listeners and
// its outbound connections come from it (its address and, in pods, its network namespace); a nil workload
// means the proxy itself (the waypoint's own connections).
type Network interface {
	// Listen opens a listener for a workload on a port.
	Listen(ctx context.Context, w *state.Workload, port uint16) (net.Listener, error)
	// Dial opens a TCP connection from a workload (or the proxy itself when w is nil) to dst.
	Dial(ctx context.Context, w *state.Workload, dst netip.AddrPort) (net.Conn, error)
	// OriginalDestination returns where a redirected connection was going.
	OriginalDestination(c net.Conn) (netip.AddrPort, error)
}

// WorkloadHooks is implemented by a Network that acts when a workload's listeners open or close: the
// in-pod redirection installs a pod's capture rules once its listeners are open, and removes them before
// they close (the workload left the mesh). A proxy that drains for a successor calls neither: the rules
// stay and the successor's listeners take over.
type WorkloadHooks interface {
	Opened(w *state.Workload) error
	Closing(key string)
}

// NetworkChanges is implemented by a Network that learns where workloads' sockets live after the
// configuration named them (the CNI plugin reports a pod's network namespace): it signals each change, so
// that the proxy opens what failed at once instead of at its next retry.
type NetworkChanges interface {
	Changed() <-chan struct{}
}

// LocalNetwork is the Network of a proxy whose workloads live in its own network namespace: each
// workload's listeners bind the workload's address, and connections from a workload leave from its
// address. It is how tests and the local demo run many pods on one host, and the same code opens the
// sockets inside a pod's namespace in production (see package redirect).
type LocalNetwork struct {
	// Mark sets SO_MARK on outgoing connections when not zero (needs CAP_NET_ADMIN).
	Mark int
	// Self is the address the proxy's own connections leave from (the waypoint's address); zero: any.
	Self netip.Addr
	// Any makes listeners bind the wildcard address instead of the workload's (inside a pod's namespace).
	Any bool
}

// Listen binds the workload's first address (or the wildcard address) with SO_REUSEPORT.
func (n LocalNetwork) Listen(ctx context.Context, w *state.Workload, port uint16) (net.Listener, error) {
	addr := netip.IPv6Unspecified()
	if !n.Any && w != nil && len(w.Addresses) > 0 {
		addr = w.Addresses[0]
	}
	return ListenReusePort(ctx, netip.AddrPortFrom(addr, port))
}

// Dial connects from the workload's address, marked.
func (n LocalNetwork) Dial(ctx context.Context, w *state.Workload, dst netip.AddrPort) (net.Conn, error) {
	src := n.Self
	if w != nil && len(w.Addresses) > 0 {
		src = w.Addresses[0]
	}
	return DialFrom(ctx, src, dst, n.Mark)
}

// OriginalDestination reads SO_ORIGINAL_DST.
func (LocalNetwork) OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	return OriginalDestination(c)
}

// ListenReusePort listens with SO_REUSEADDR and SO_REUSEPORT, so that a new proxy binds the same ports
// while the old one drains.
func ListenReusePort(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// DialFrom connects to dst from src (zero: any source), setting SO_MARK when mark is not zero.
//
// A socket bound to src gets IP_BIND_ADDRESS_NO_PORT: the kernel then picks the source port at
// connect(2), per destination, as for an unbound socket. Without it bind(2) picks a port for the address
// alone and must skip every port still held by a TIME_WAIT socket of that address, which made bind the
// main cost of a node proxy under a high rate of new connections.
func DialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort, mark int) (net.Conn, error) {
	d := net.Dialer{}
	bound := src.IsValid()
	if bound {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	if bound || mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if bound {
					// Best effort: kernels before 4.2 lack the option and bind as before.
					_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				}
				if mark != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
				}
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return c, nil
}

// OriginalDestination returns the destination a connection had before an iptables REDIRECT or DNAT
// (SO_ORIGINAL_DST, IPv4 and IPv6).
func OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP connection", c)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := netip.ParseAddrPort(tc.LocalAddr().String())
	var out netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			// The kernel writes a sockaddr_in (family, port, address) into the 16 bytes of the buffer.
			mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if serr = err; err == nil {
				b := mreq.Multiaddr
				out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), binary.BigEndian.Uint16(b[2:4]))
			}
			return
		}
		// The kernel writes a sockaddr_in6, the first field of this structure.
		info, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst)
		if serr = err; err == nil {
			var port [2]byte // the port field holds network byte order
			binary.NativeEndian.PutUint16(port[:], info.Addr.Port)
			out = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), binary.BigEndian.Uint16(port[:]))
		}
	})
	if err = errors.Join(err, serr); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (SO_ORIGINAL_DST; was the connection redirected?): %w", err)
	}
	return netip.AddrPortFrom(out.Addr().Unmap(), out.Port()), nil
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h.
const ip6tSoOriginalDst = 80
