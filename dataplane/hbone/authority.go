package hbone

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrBadAuthority wraps every reason a CONNECT :authority is refused.
var ErrBadAuthority = errors.New("bad CONNECT authority")

// ParseAuthority parses a CONNECT :authority of the form <ip>:<port> ("10.0.0.1:80", "[fd00::1]:80").
// Host names, zones, a missing or zero port are refused. IPv4-mapped IPv6 addresses are unmapped, so
// the result compares equal to the plain IPv4 form.
func ParseAuthority(s string) (netip.AddrPort, error) {
	if len(s) > len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535") {
		return netip.AddrPort{}, fmt.Errorf("%w: too long", ErrBadAuthority)
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: want <ip>:<port>", ErrBadAuthority, s)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: zones are not allowed", ErrBadAuthority, s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: port 0", ErrBadAuthority, s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
