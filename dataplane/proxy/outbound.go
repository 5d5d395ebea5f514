package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambient-dev/ambient-operator/dataplane/hbone"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

// route is where a connection goes: over HBONE to a tunnel endpoint, or in plaintext to an address.
type route struct {
	// hbone: tunnel to Address presenting Destination, CONNECT to authority.
	hbone     bool
	address   netip.AddrPort
	authority netip.AddrPort
	peer      identity.Identity
	// service and workload describe the destination for telemetry.
	service  *state.Service
	workload *state.Workload
	// waypoint is set when the route goes through a waypoint.
	waypoint *state.Workload
}

// errNoEndpoint is a destination service without a healthy endpoint for the port.
var errNoEndpoint = errors.New("no healthy endpoint")

// resolve decides the route of a connection from src to dst (node mode, outbound). Destinations that use
// a waypoint go to it (unless src is that waypoint); mesh workloads are reached over HBONE at
// <workload>:15008; anything else passes through in plaintext.
func (p *Proxy) resolve(snap *state.Snapshot, src *state.Workload, dst netip.AddrPort) (route, error) {
	if svc := snap.ServiceByAddr(dst.Addr()); svc != nil {
		if svc.Waypoint != "" {
			return p.viaWaypoint(snap, svc.Waypoint, dst, route{service: svc})
		}
		if _, ok := svc.HasPort(dst.Port()); !ok {
			return route{address: dst, service: svc}, nil
		}
		eps := snap.Endpoints(svc.Key, dst.Port())
		if len(eps) == 0 {
			// No endpoint known to the mesh: let the platform (kube-proxy) try the virtual address.
			return route{address: dst, service: svc}, nil
		}
		ep := eps[p.lb.pick(svc.Key+"|"+fmt.Sprint(dst.Port()), len(eps))]
		return p.toWorkload(ep.Workload, netip.AddrPortFrom(ep.Workload.Addresses[0], ep.Port), route{service: svc}), nil
	}
	if w := snap.WorkloadByAddr(dst.Addr()); w != nil {
		if w.Waypoint != "" && src != nil {
			return p.viaWaypoint(snap, w.Waypoint, dst, route{workload: w})
		}
		return p.toWorkload(w, dst, route{}), nil
	}
	return route{address: dst}, nil
}

func (p *Proxy) toWorkload(w *state.Workload, dst netip.AddrPort, r route) route {
	r.workload = w
	if !w.InMesh() {
		r.address = dst
		return r
	}
	r.hbone = true
	r.address = netip.AddrPortFrom(dst.Addr(), p.cfg.Ports.HBONE)
	r.authority = dst
	r.peer = w.Identity
	return r
}

// viaWaypoint routes to an endpoint of the waypoint's Service; the CONNECT authority stays the original
// destination so that the waypoint knows what was addressed.
func (p *Proxy) viaWaypoint(snap *state.Snapshot, waypoint string, dst netip.AddrPort, r route) (route, error) {
	eps := snap.Endpoints(waypoint, p.cfg.Ports.HBONE)
	if len(eps) == 0 {
		return r, fmt.Errorf("waypoint %s: %w", waypoint, errNoEndpoint)
	}
	ep := eps[p.lb.pick(waypoint, len(eps))]
	r.hbone = true
	r.address = netip.AddrPortFrom(ep.Workload.Addresses[0], ep.Port)
	r.authority = dst
	r.peer = ep.Workload.Identity
	r.waypoint = ep.Workload
	return r, nil
}

// outbound handles a connection a local workload opened (captured on 15001).
func (p *Proxy) outbound(c net.Conn, srcKey string) {
	start := time.Now()
	defer func() { _ = c.Close() }()
	snap := p.cfg.Store.Load()
	src := snap.Workload(srcKey)
	if src == nil {
		return
	}
	dst, err := p.cfg.Network.OriginalDestination(c)
	if err != nil {
		p.log.Error(err, "Outbound connection without an original destination", "source", srcKey)
		return
	}
	srcAddr, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	r, err := p.resolve(snap, src, dst)
	labels := outboundLabels(src, r, snap.TrustDomain())
	cm := p.cfg.Metrics.Open(labels)
	entry := telemetry.AccessLogEntry{
		Direction: telemetry.DirectionOutbound, SrcAddr: srcAddr, SrcWorkload: src.Name(), SrcNamespace: src.Namespace(),
		SrcIdentity: src.Identity, DstAddr: dst,
	}
	describeRoute(&entry, r)
	defer func() {
		entry.BytesReceived, entry.BytesSent, entry.Duration, entry.Result = cm.Received(), cm.Sent(), time.Since(start), cm.Result()
		p.cfg.AccessLog.Log(entry)
	}()
	if err != nil {
		cm.Fail(telemetry.FailureNoWorkload)
		entry.Error = err
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	upstream, err := p.open(ctx, src, r)
	cancel()
	if err != nil {
		cm.Fail(failureReason(err))
		entry.Error = err
		return
	}
	t := &tracked{close: func() { _ = c.Close(); _ = upstream.Close() }, metrics: cm}
	p.conns.add(t)
	defer p.conns.remove(t)
	client := &countingConn{Conn: c, onRead: cm.AddReceived, onWrite: cm.AddSent}
	_, _, err = hbone.Pipe(client, upstream)
	if err != nil && !t.closed.Load() {
		entry.Error = err
	}
	cm.Close()
}

// open connects a route: a tunnel from the source workload, or a marked plaintext connection.
func (p *Proxy) open(ctx context.Context, src *state.Workload, r route) (net.Conn, error) {
	if !r.hbone {
		c, err := p.cfg.Network.Dial(ctx, src, r.address)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", r.address, err)
		}
		return c, nil
	}
	key := hbone.PoolKey{Destination: r.peer, Address: r.address}
	hdr := http.Header{}
	if src != nil {
		key.Source, key.Origin = src.Identity, src.Addresses[0]
		hdr.Set("Baggage", baggage(src))
	} else {
		key.Source = p.cfg.Waypoint.Identity
	}
	return p.pool.Connect(ctx, key, r.authority, hdr)
}

// baggage carries the source workload's metadata, as ztunnel does, for the destination's telemetry.
func baggage(w *state.Workload) string {
	b := "k8s.namespace.name=" + w.Namespace() + ",k8s.pod.name=" + w.Name()
	if n := w.Proto.GetCanonicalName(); n != "" {
		b += ",service.name=" + n
	}
	if v := w.Proto.GetCanonicalRevision(); v != "" {
		b += ",service.version=" + v
	}
	return b
}

func failureReason(err error) string {
	var he *hbone.Error
	switch {
	case errors.As(err, &he) && he.Status == http.StatusUnauthorized:
		return telemetry.FailureDenied
	case errors.As(err, &he) && he.Status >= 500:
		return telemetry.FailureHBONEStatus5xx
	case errors.As(err, &he):
		return telemetry.FailureHBONEStatus4xx
	default:
		return telemetry.FailureUpstreamConnect
	}
}

func describeRoute(e *telemetry.AccessLogEntry, r route) {
	if r.address.IsValid() {
		e.DstAddr = r.address
	}
	if r.hbone {
		e.DstHBONEAddr = r.authority
		e.DstIdentity = r.peer
	}
	if r.service != nil {
		e.DstService = r.service.Key
	}
	if r.workload != nil {
		e.DstWorkload, e.DstNamespace = r.workload.Name(), r.workload.Namespace()
	}
}
