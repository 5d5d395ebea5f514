package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/hbone"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

// stream is what connect learned about a CONNECT stream, for streamEnded to report.
type stream struct {
	start   time.Time
	cm      *telemetry.ConnMetrics
	entry   telemetry.AccessLogEntry
	tracked *tracked
	reason  string
}

// connect handles one CONNECT stream: the destination must be a workload this proxy serves (node mode) or
// a destination that uses this waypoint; the policies of the target must allow the peer; then the
// upstream is connected. Only then does the server answer 200.
func (p *Proxy) connect(ctx context.Context, req *hbone.Request) (net.Conn, error) {
	snap := p.cfg.Store.Load()
	st := &stream{start: time.Now(), entry: telemetry.AccessLogEntry{
		Direction: telemetry.DirectionInbound, SrcAddr: req.PeerAddr, SrcIdentity: req.Peer, DstAddr: req.Authority,
	}}
	src := snap.WorkloadByAddr(req.PeerAddr.Addr())
	if src != nil {
		st.entry.SrcWorkload, st.entry.SrcNamespace = src.Name(), src.Namespace()
	}
	p.streams.Store(req, st)

	var (
		r   route
		tg  target
		err *hbone.Error
	)
	if p.cfg.Mode == WaypointMode {
		r, tg, err = p.waypointRoute(snap, req.Authority)
	} else {
		r, tg, err = p.nodeRoute(snap, req)
	}
	labels := telemetry.ConnectionLabels{Reporter: telemetry.ReporterDestination, ConnectionSecurityPolicy: telemetry.SecurityPolicyMutualTLS}
	if p.cfg.Mode == WaypointMode {
		labels.Reporter = telemetry.ReporterWaypoint
	}
	setSource(&labels, src, req.Peer)
	var dstID identity.Identity
	if r.workload != nil {
		dstID = r.workload.Identity
		st.entry.DstWorkload, st.entry.DstNamespace = r.workload.Name(), r.workload.Namespace()
	}
	if r.service != nil {
		st.entry.DstService = r.service.Key
	}
	st.entry.DstIdentity = dstID
	setDestination(&labels, r.service, r.workload, dstID, snap.TrustDomain())
	st.cm = p.cfg.Metrics.Open(labels)
	if err != nil {
		st.reason = telemetry.FailureNoWorkload
		if err.Status == http.StatusBadRequest {
			st.reason = telemetry.FailureOther
		}
		return nil, err
	}

	conn := authz.Connection{Source: req.Peer, SourceAddr: req.PeerAddr.Addr(), DestinationAddr: req.Authority.Addr(), DestinationPort: req.Authority.Port()}
	policies := policiesFor(snap, tg, nil)
	if d := authz.Evaluate(policies, &conn); !d.Allowed {
		st.entry.Policy, st.reason = d.Policy, telemetry.FailureDenied
		return nil, hbone.Denied(d.Reason)
	}

	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	var upstream net.Conn
	var uerr error
	if p.cfg.Mode == WaypointMode {
		upstream, uerr = p.open(dctx, nil, r)
		if r.hbone {
			st.entry.DstAddr, st.entry.DstHBONEAddr = r.address, r.authority
		} else {
			st.entry.DstAddr = r.address
		}
	} else {
		upstream, uerr = p.cfg.Network.Dial(dctx, r.workload, req.Authority)
	}
	if uerr != nil {
		st.reason = failureReason(uerr)
		st.entry.Error = uerr
		return nil, hbone.Unavailable("upstream connect failed")
	}
	t := &tracked{close: func() { _ = upstream.Close() }, authorized: true, conn: conn, target: tg, policies: policies, metrics: st.cm}
	st.tracked = t
	p.conns.add(t)
	// Bytes read from the upstream go back to the source ("sent"); bytes written to it came from the
	// source ("received").
	return &countingConn{Conn: upstream, onRead: st.cm.AddSent, onWrite: st.cm.AddReceived}, nil
}

// nodeRoute checks that a CONNECT targets the workload whose listener took it, on this node.
func (p *Proxy) nodeRoute(snap *state.Snapshot, req *hbone.Request) (route, target, *hbone.Error) {
	dst := snap.WorkloadByAddr(req.Authority.Addr())
	if dst == nil {
		return route{}, target{}, hbone.Unavailable(fmt.Sprintf("unknown workload %s", req.Authority.Addr()))
	}
	r := route{workload: dst}
	local := snap.WorkloadByAddr(req.LocalAddr.Addr())
	if dst.Node() != p.cfg.Node || (local != nil && local.Key != dst.Key) {
		return r, target{}, hbone.BadRequest(fmt.Sprintf("target %s is not a workload of this node", req.Authority.Addr()))
	}
	return r, target{workload: dst.Key}, nil
}

// waypointRoute finds the endpoint for a destination that uses this waypoint.
func (p *Proxy) waypointRoute(snap *state.Snapshot, authority netip.AddrPort) (route, target, *hbone.Error) {
	self := p.cfg.Waypoint.Key
	tg := target{waypoint: self}
	if svc := snap.ServiceByAddr(authority.Addr()); svc != nil {
		if svc.Waypoint != self {
			return route{service: svc}, tg, hbone.BadRequest(fmt.Sprintf("service %s does not use waypoint %s", svc.Key, self))
		}
		tg.service = svc.Key
		eps := snap.Endpoints(svc.Key, authority.Port())
		if len(eps) == 0 {
			return route{service: svc}, tg, hbone.Unavailable(fmt.Sprintf("service %s has no healthy endpoint for port %d", svc.Key, authority.Port()))
		}
		ep := eps[p.lb.pick(svc.Key+"|"+fmt.Sprint(authority.Port()), len(eps))]
		return p.toWorkload(ep.Workload, netip.AddrPortFrom(ep.Workload.Addresses[0], ep.Port), route{service: svc}), tg, nil
	}
	if w := snap.WorkloadByAddr(authority.Addr()); w != nil {
		if w.Waypoint != self {
			return route{workload: w}, tg, hbone.BadRequest(fmt.Sprintf("workload %s does not use waypoint %s", w.Key, self))
		}
		return p.toWorkload(w, authority, route{}), tg, nil
	}
	return route{}, tg, hbone.Unavailable(fmt.Sprintf("unknown destination %s", authority.Addr()))
}

// streamEnded reports a CONNECT stream once it is over.
func (p *Proxy) streamEnded(req *hbone.Request, stats hbone.StreamStats) {
	v, ok := p.streams.LoadAndDelete(req)
	if !ok {
		// Refused before the handler (not CONNECT, malformed authority).
		p.cfg.Metrics.ConnectionFailed(telemetry.FailureOther)
		return
	}
	st := v.(*stream)
	if st.tracked != nil {
		p.conns.remove(st.tracked)
	}
	switch {
	case stats.Status == http.StatusOK:
		st.cm.Close() // a connection closed by a policy change already failed as "denied"
	case st.reason != "":
		st.cm.Fail(st.reason)
	default:
		st.cm.Fail(telemetry.FailureOther)
	}
	if stats.Err != nil && st.entry.Error == nil && !errors.Is(stats.Err, net.ErrClosed) {
		st.entry.Error = stats.Err
	}
	st.entry.BytesReceived, st.entry.BytesSent = st.cm.Received(), st.cm.Sent()
	st.entry.Duration, st.entry.Result = time.Since(st.start), st.cm.Result()
	p.cfg.AccessLog.Log(st.entry)
}

// inboundPlaintext handles plaintext traffic to a local workload (captured on 15006): the source has no
// identity, so only policies that allow plaintext let it through.
func (p *Proxy) inboundPlaintext(c net.Conn, key string) {
	start := time.Now()
	defer func() { _ = c.Close() }()
	snap := p.cfg.Store.Load()
	w := snap.Workload(key)
	if w == nil {
		return
	}
	dst, err := p.cfg.Network.OriginalDestination(c)
	if err != nil {
		p.log.Error(err, "Inbound plaintext connection without an original destination", "workload", key)
		return
	}
	srcAddr, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	src := snap.WorkloadByAddr(srcAddr.Addr())
	labels := telemetry.ConnectionLabels{Reporter: telemetry.ReporterDestination, ConnectionSecurityPolicy: telemetry.SecurityPolicyUnknown}
	setSource(&labels, src, identity.Identity{})
	setDestination(&labels, nil, w, w.Identity, snap.TrustDomain())
	cm := p.cfg.Metrics.Open(labels)
	entry := telemetry.AccessLogEntry{Direction: telemetry.DirectionInbound, SrcAddr: srcAddr, DstAddr: dst,
		DstWorkload: w.Name(), DstNamespace: w.Namespace(), DstIdentity: w.Identity}
	if src != nil {
		entry.SrcWorkload, entry.SrcNamespace = src.Name(), src.Namespace()
	}
	defer func() {
		entry.BytesReceived, entry.BytesSent, entry.Duration, entry.Result = cm.Received(), cm.Sent(), time.Since(start), cm.Result()
		p.cfg.AccessLog.Log(entry)
	}()

	tg := target{workload: w.Key}
	conn := authz.Connection{SourceAddr: srcAddr.Addr(), DestinationAddr: dst.Addr(), DestinationPort: dst.Port()}
	policies := policiesFor(snap, tg, nil)
	if d := authz.Evaluate(policies, &conn); !d.Allowed {
		entry.Policy = d.Policy
		cm.Fail(telemetry.FailureDenied)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	upstream, err := p.cfg.Network.Dial(ctx, w, dst)
	cancel()
	if err != nil {
		entry.Error = err
		cm.Fail(telemetry.FailureUpstreamConnect)
		return
	}
	t := &tracked{close: func() { _ = c.Close(); _ = upstream.Close() }, authorized: true, conn: conn, target: tg, policies: policies, metrics: cm}
	p.conns.add(t)
	defer p.conns.remove(t)
	client := &countingConn{Conn: c, onRead: cm.AddReceived, onWrite: cm.AddSent}
	if _, _, err := hbone.Pipe(client, upstream); err != nil && !t.closed.Load() {
		entry.Error = err
	}
	cm.Close()
}
