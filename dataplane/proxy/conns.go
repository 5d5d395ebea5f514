package proxy

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

// target says which policies authorized a connection, so that they can be selected again after a change.
type target struct {
	// workload: the destination workload's key (node proxy).
	workload string
	// service: the destination service's key (waypoint), or "" for traffic addressed to a workload.
	service string
	// waypoint: the waypoint's key when the waypoint authorized the connection.
	waypoint string
}

// tracked is an open connection: closed on drain deadline, and re-checked after policy changes when it
// was authorized here.
type tracked struct {
	close func()
	// authorized is set for connections this proxy authorized.
	authorized bool
	conn       authz.Connection
	target     target
	policies   []*authz.Policy
	metrics    *telemetry.ConnMetrics
	closed     atomic.Bool
}

type registry struct {
	mu    sync.Mutex
	conns map[*tracked]struct{}
}

func newRegistry() *registry { return &registry{conns: map[*tracked]struct{}{}} }

func (r *registry) add(t *tracked) {
	r.mu.Lock()
	r.conns[t] = struct{}{}
	r.mu.Unlock()
}

func (r *registry) remove(t *tracked) {
	r.mu.Lock()
	delete(r.conns, t)
	r.mu.Unlock()
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func (r *registry) snapshot() []*tracked {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*tracked, 0, len(r.conns))
	for t := range r.conns {
		out = append(out, t)
	}
	return out
}

// closeAll closes every tracked connection and returns how many.
func (r *registry) closeAll() int {
	all := r.snapshot()
	for _, t := range all {
		t.shut()
	}
	return len(all)
}

func (t *tracked) shut() {
	if t.closed.CompareAndSwap(false, true) {
		t.close()
	}
}

// policiesFor selects the policies that apply to a connection's target in a snapshot.
func policiesFor(snap *state.Snapshot, tg target, buf []*authz.Policy) []*authz.Policy {
	set := snap.Policies()
	if tg.waypoint != "" {
		var ns string
		var listed []string
		if svc := snap.Service(tg.service); svc != nil {
			ns, listed = svc.Namespace(), svc.Policies
		}
		return set.ForWaypoint(tg.waypoint, ns, listed, buf)
	}
	w := snap.Workload(tg.workload)
	if w == nil {
		return buf[:0]
	}
	return set.ForWorkload(w.Namespace(), w.Policies, buf)
}

// revalidate re-checks the open connections this proxy authorized against the current policies and
// closes those that are no longer allowed.
func (p *Proxy) revalidate() {
	snap := p.cfg.Store.Load()
	var buf []*authz.Policy
	for _, t := range p.conns.snapshot() {
		if !t.authorized || t.closed.Load() {
			continue
		}
		buf = policiesFor(snap, t.target, buf[:0])
		if authz.SamePolicies(buf, t.policies) {
			continue
		}
		d := authz.Evaluate(buf, &t.conn)
		if d.Allowed {
			t.policies = append([]*authz.Policy(nil), buf...)
			continue
		}
		p.log.Info("Closing a connection that a policy change no longer allows", "source", t.conn.Source.String(),
			"sourceAddr", t.conn.SourceAddr.String(), "destination", t.conn.DestinationAddr.String(), "port", t.conn.DestinationPort,
			"reason", d.Reason)
		if t.metrics != nil {
			t.metrics.Fail(telemetry.FailureDenied)
		}
		t.shut()
	}
}

// balancer picks endpoints round robin, per service and port.
type balancer struct {
	counters sync.Map // string -> *atomic.Uint64
}

func (b *balancer) pick(key string, n int) int {
	v, _ := b.counters.LoadOrStore(key, new(atomic.Uint64))
	return int((v.(*atomic.Uint64).Add(1) - 1) % uint64(n)) // #nosec G115 -- n > 0 and small
}

// countingConn reports the bytes a connection carries to its metrics while they flow.
type countingConn struct {
	net.Conn
	onRead, onWrite func(int)
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.onRead(n)
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.onWrite(n)
	}
	return n, err
}

// CloseWrite passes half-close through.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
