// Package proxy is the data path of the mesh: the node proxy (ztunnel role), which captures the traffic
// of the workloads on its node, tunnels it over HBONE to the destination's node proxy or waypoint and
// authorizes what arrives for its workloads; and the waypoint, which terminates HBONE for the services
// that use it, enforces their policies and forwards to an endpoint.
//
// Both read the mesh from a state.Store snapshot (never locked on the hot path), get certificates from a
// certs.Provider, authorize with package authz, and report with package telemetry. A policy change
// re-checks every open connection and closes those no longer allowed. Drain stops accepting, sends
// GOAWAY and lets open connections finish until the deadline; listeners use SO_REUSEPORT so that a new
// proxy takes new connections meanwhile.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/hbone"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

// Mode is the role of a proxy.
type Mode int

// Roles.
const (
	// NodeMode: the per-node proxy of the workloads scheduled on Config.Node.
	NodeMode Mode = iota
	// WaypointMode: the destination-side proxy of the services (and workloads) that use Config.Waypoint.
	WaypointMode
)

// Ports of the proxy (DESIGN.md section 3).
type Ports struct {
	Outbound         uint16
	InboundPlaintext uint16
	HBONE            uint16
}

// DefaultPorts are the ports of the design.
var DefaultPorts = Ports{Outbound: 15001, InboundPlaintext: 15006, HBONE: 15008}

// WaypointConfig says who a waypoint is.
type WaypointConfig struct {
	// Key is "<namespace>/<name>" of the waypoint's Service: what Service.waypoint and Workload.waypoint
	// name.
	Key string
	// Identity is the waypoint's own identity (its service account).
	Identity identity.Identity
	// Listen is the HBONE listener address.
	Listen netip.AddrPort
}

// ReadyWorkloads is the readiness item the proxy reports (Config.Ready).
const ReadyWorkloads = "workloads"

// Config configures a proxy.
type Config struct {
	Mode Mode
	// Node is the node a node proxy serves.
	Node string
	// Waypoint is set in WaypointMode.
	Waypoint WaypointConfig

	Store   *state.Store
	Certs   certs.Provider
	Network Network
	Ports   Ports

	Log       logr.Logger
	Metrics   *telemetry.Metrics
	AccessLog *telemetry.AccessLog
	// Ready receives the "workloads" readiness item: done once the proxy serves every workload of a
	// synced snapshot (listeners open, capture started, certificates held); may be nil.
	Ready *telemetry.Readiness
	// ConfigSynced, when set, is closed once the store holds the control plane's full state; until then
	// the proxy is not ready. Nil: the store is complete from the start (static configuration).
	ConfigSynced <-chan struct{}

	// ConnectTimeout bounds connecting to an upstream or opening a tunnel; default 5s.
	ConnectTimeout time.Duration
	// RetryInterval is how often listeners and certificates that failed are tried again; default 10s.
	RetryInterval time.Duration
	// HBONE tunes the HBONE server and pool; zero values take the package defaults.
	HBONEServer hbone.ServerConfig
	HBONEPool   hbone.PoolConfig
}

// Proxy is a running node proxy or waypoint.
type Proxy struct {
	cfg    Config
	log    logr.Logger
	pool   *hbone.Pool
	server *hbone.Server
	conns  *registry
	lb     *balancer

	mu        sync.Mutex
	listeners map[string]*workloadListeners // node mode: by workload key; waypoint mode: one, key ""
	draining  bool
	serving   sync.WaitGroup // accept loops
	handlers  sync.WaitGroup // connection handlers
	streams   sync.Map       // *hbone.Request -> *stream
}

type workloadListeners struct {
	addr netip.Addr
	ls   []net.Listener
	// hooked: WorkloadHooks.Opened succeeded (the pod's traffic is captured).
	hooked bool
}

// New builds a proxy; Run starts it.
func New(cfg Config) (*Proxy, error) {
	if cfg.Store == nil || cfg.Certs == nil || cfg.Network == nil {
		return nil, errors.New("proxy: Store, Certs and Network are required")
	}
	if cfg.Mode == NodeMode && cfg.Node == "" {
		return nil, errors.New("proxy: a node proxy needs its node name")
	}
	if cfg.Mode == WaypointMode && (cfg.Waypoint.Key == "" || cfg.Waypoint.Identity.IsZero() || !cfg.Waypoint.Listen.IsValid()) {
		return nil, errors.New("proxy: a waypoint needs its key, identity and listen address")
	}
	if cfg.Ports == (Ports{}) {
		cfg.Ports = DefaultPorts
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 10 * time.Second
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Log,
		conns:     newRegistry(),
		lb:        &balancer{},
		listeners: map[string]*workloadListeners{},
	}
	sc := cfg.HBONEServer
	sc.GetCertificate = p.serverCertificate
	sc.Roots = cfg.Certs.Roots
	sc.TrustDomain = cfg.Store.Load().TrustDomain()
	sc.Handler = hbone.HandlerFunc(p.connect)
	sc.Logger = cfg.Log.WithName("hbone")
	sc.OnStreamEnd = p.streamEnded
	p.server = hbone.NewServer(sc)

	pc := cfg.HBONEPool
	pc.GetClientCertificate = p.clientCertificate
	pc.Roots = cfg.Certs.Roots
	pc.Dial = p.dialTunnel
	pc.Logger = cfg.Log.WithName("hbone-pool")
	p.pool = hbone.NewPool(pc)
	return p, nil
}

// Run serves until ctx ends; then call Drain. It keeps the listeners in step with the snapshot (node
// mode: one set per local workload) and re-checks open connections after every policy change.
func (p *Proxy) Run(ctx context.Context) error {
	updates := p.cfg.Store.Subscribe()
	synced := p.cfg.ConfigSynced
	var network <-chan struct{}
	if nc, ok := p.cfg.Network.(NetworkChanges); ok {
		network = nc.Changed()
	}
	p.sync(ctx)
	ticker := time.NewTicker(p.cfg.RetryInterval) // retries listeners and certificates that failed
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-updates:
			p.sync(ctx)
			p.revalidate()
		case <-synced:
			synced = nil // a closed channel once is enough
			p.sync(ctx)
		case <-network:
			p.sync(ctx)
		case <-ticker.C:
			p.sync(ctx)
		}
	}
}

// configSynced reports whether the store holds the control plane's full state.
func (p *Proxy) configSynced() bool {
	if p.cfg.ConfigSynced == nil {
		return true
	}
	select {
	case <-p.cfg.ConfigSynced:
		return true
	default:
		return false
	}
}

// setReady reports the "workloads" readiness item: ready when the last sync served everything of a
// synced snapshot.
func (p *Proxy) setReady(complete bool, pending string) {
	if p.cfg.Ready == nil {
		return
	}
	switch {
	case !p.configSynced():
		p.cfg.Ready.Pending(ReadyWorkloads)
	case complete:
		p.cfg.Ready.Done(ReadyWorkloads)
	default:
		p.cfg.Ready.Pending(ReadyWorkloads)
		p.log.V(1).Info("Not ready", "pending", pending)
	}
}

// sync opens and closes listeners to match the snapshot, and fetches certificates ahead of need.
func (p *Proxy) sync(ctx context.Context) {
	snap := p.cfg.Store.Load()
	if p.cfg.Mode == WaypointMode {
		p.syncWaypoint(ctx)
		return
	}
	want := map[string]*state.Workload{}
	for _, w := range snap.NodeWorkloads(p.cfg.Node) {
		if w.InMesh() && !w.Proto.GetNativeHbone() && len(w.Addresses) > 0 {
			want[w.Key] = w
		}
	}
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return
	}
	hooks, _ := p.cfg.Network.(WorkloadHooks)
	var retry []*state.Workload
	for key, wl := range p.listeners {
		if w, ok := want[key]; !ok || w.Addresses[0] != wl.addr {
			// The workload left (or moved): stop capturing and taking its new connections. Its open
			// connections go on.
			if hooks != nil {
				hooks.Closing(key)
			}
			closeAll(wl.ls)
			delete(p.listeners, key)
			p.log.V(1).Info("Closed the listeners of a workload that left", "workload", key)
		}
	}
	var open []*state.Workload
	for key, w := range want {
		wl, ok := p.listeners[key]
		switch {
		case !ok:
			open = append(open, w)
		case hooks != nil && !wl.hooked:
			retry = append(retry, w)
		}
	}
	p.mu.Unlock()
	var failed []string
	for _, w := range retry {
		if !p.hookOpened(w) {
			failed = append(failed, w.Key)
		}
	}

	// Certificates first: a listener joins the workload's port group (beside a predecessor's during an
	// upgrade) only once it can complete handshakes for the workload. If the CA does not answer in time,
	// open anyway: captured traffic then fails closed instead of bypassing the mesh.
	p.fetchCertificates(ctx, open)
	for _, w := range open {
		if err := p.openWorkload(ctx, w); err != nil {
			p.log.Error(err, "Opening the listeners of a workload; retrying later", "workload", w.Key)
			failed = append(failed, w.Key)
			continue
		}
		// On this goroutine, so that capture starts and stops in the order the workload came and went.
		if !p.hookOpened(w) {
			failed = append(failed, w.Key)
		}
	}
	missing := p.prefetchCertificates(ctx, want)
	p.setReady(len(failed) == 0 && len(missing) == 0, fmt.Sprintf("workloads %v, certificates %v", failed, missing))
}

// fetchCertificates gets the certificates of the workloads' identities in parallel, each bounded by
// ConnectTimeout; failures are logged (and retried by prefetchCertificates).
func (p *Proxy) fetchCertificates(ctx context.Context, ws []*state.Workload) {
	ids := map[identity.Identity]bool{}
	for _, w := range ws {
		ids[w.Identity] = true
	}
	var wg sync.WaitGroup
	for id := range ids {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
			defer cancel()
			if _, err := p.cfg.Certs.Certificate(cctx, id); err != nil {
				p.log.Error(err, "No certificate yet for a workload about to be served", "identity", id.String())
			}
		})
	}
	wg.Wait()
}

func (p *Proxy) openWorkload(ctx context.Context, w *state.Workload) error {
	var ls []net.Listener
	for _, port := range []uint16{p.cfg.Ports.Outbound, p.cfg.Ports.InboundPlaintext, p.cfg.Ports.HBONE} {
		l, err := p.cfg.Network.Listen(ctx, w, port)
		if err != nil {
			closeAll(ls)
			return err
		}
		ls = append(ls, l)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		closeAll(ls)
		return nil
	}
	p.listeners[w.Key] = &workloadListeners{addr: w.Addresses[0], ls: ls}
	key := w.Key
	p.serve(ls[0], func(c net.Conn) { p.outbound(c, key) })
	p.serve(ls[1], func(c net.Conn) { p.inboundPlaintext(c, key) })
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		if err := p.server.Serve(ls[2]); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, hbone.ErrServerClosed) {
			p.log.Error(err, "HBONE listener stopped", "workload", key)
		}
	}()
	p.log.Info("Serving a workload", "workload", key, "address", w.Addresses[0].String(), "identity", w.Identity.String())
	return nil
}

// hookOpened tells the Network that a workload's listeners are open (in-pod: start capturing).
func (p *Proxy) hookOpened(w *state.Workload) bool {
	hooks, ok := p.cfg.Network.(WorkloadHooks)
	if !ok {
		return true
	}
	if err := hooks.Opened(w); err != nil {
		p.log.Error(err, "Starting to capture a workload's traffic; retrying later", "workload", w.Key)
		return false
	}
	p.mu.Lock()
	if wl := p.listeners[w.Key]; wl != nil {
		wl.hooked = true
	}
	p.mu.Unlock()
	return true
}

func (p *Proxy) syncWaypoint(ctx context.Context) {
	if !p.openWaypointListener(ctx) {
		p.setReady(false, "the HBONE listener")
		return
	}
	// Every sync (and the periodic retry) until the certificate is there; a cached one costs nothing.
	missing := p.prefetchCertificates(ctx, nil)
	p.setReady(len(missing) == 0, fmt.Sprintf("certificates %v", missing))
}

// openWaypointListener opens the waypoint's HBONE listener unless it is open; it reports whether the
// listener is open.
func (p *Proxy) openWaypointListener(ctx context.Context) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		return false
	}
	if p.listeners[""] != nil {
		return true
	}
	l, err := ListenReusePort(ctx, p.cfg.Waypoint.Listen)
	if err != nil {
		p.log.Error(err, "Opening the waypoint's HBONE listener; retrying later")
		return false
	}
	p.listeners[""] = &workloadListeners{addr: p.cfg.Waypoint.Listen.Addr(), ls: []net.Listener{l}}
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		if err := p.server.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, hbone.ErrServerClosed) {
			p.log.Error(err, "Waypoint HBONE listener stopped")
		}
	}()
	p.log.Info("Serving as waypoint", "waypoint", p.cfg.Waypoint.Key, "address", p.cfg.Waypoint.Listen.String(), "identity", p.cfg.Waypoint.Identity.String())
	return true
}

// serve runs an accept loop; each connection is handled on its own goroutine, tracked for drain.
func (p *Proxy) serve(l net.Listener, handle func(net.Conn)) {
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return // closed
			}
			p.handlers.Add(1)
			go func() {
				defer p.handlers.Done()
				handle(c)
			}()
		}
	}()
}

// prefetchCertificates fetches the certificates of the local workloads (or the waypoint's own) so that
// the first connection does not wait, and reports readiness.
func (p *Proxy) prefetchCertificates(ctx context.Context, local map[string]*state.Workload) (missing []string) {
	ids := map[identity.Identity]bool{}
	if p.cfg.Mode == WaypointMode {
		ids[p.cfg.Waypoint.Identity] = true
	}
	for _, w := range local {
		ids[w.Identity] = true
	}
	for id := range ids {
		cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		_, err := p.cfg.Certs.Certificate(cctx, id)
		cancel()
		if err != nil {
			missing = append(missing, id.String())
			p.log.Error(err, "Fetching a workload certificate", "identity", id.String())
		}
	}
	return missing
}

// serverCertificate presents the identity of the workload a connection arrived for (node mode: the
// listener's workload) or the waypoint's own.
func (p *Proxy) serverCertificate(local netip.AddrPort) (*tls.Certificate, error) {
	id := p.cfg.Waypoint.Identity
	if p.cfg.Mode == NodeMode {
		w := p.cfg.Store.Load().WorkloadByAddr(local.Addr())
		if w == nil || w.Node() != p.cfg.Node {
			return nil, fmt.Errorf("no local workload at %s", local.Addr())
		}
		id = w.Identity
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	defer cancel()
	return p.cfg.Certs.Certificate(ctx, id)
}

func (p *Proxy) clientCertificate(src identity.Identity) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	defer cancel()
	return p.cfg.Certs.Certificate(ctx, src)
}

// dialTunnel opens an HBONE connection from the origin workload (node mode) or from the proxy itself.
func (p *Proxy) dialTunnel(ctx context.Context, key hbone.PoolKey) (net.Conn, error) {
	var from *state.Workload
	if key.Origin.IsValid() {
		from = p.cfg.Store.Load().WorkloadByAddr(key.Origin)
	}
	return p.cfg.Network.Dial(ctx, from, key.Address)
}

// Drain stops accepting new connections (the listeners close, so a successor bound to the same ports
// takes them), sends GOAWAY to HBONE peers, lets open connections finish until ctx ends, then closes the
// rest. It returns ctx's error when connections had to be cut.
func (p *Proxy) Drain(ctx context.Context) error {
	if p.cfg.Ready != nil {
		p.cfg.Ready.Draining()
	}
	p.mu.Lock()
	p.draining = true
	for key, wl := range p.listeners {
		closeAll(wl.ls)
		delete(p.listeners, key)
	}
	p.mu.Unlock()
	// The accept loops end with their listeners. Wait for them first: a connection accepted just before
	// the close is then counted (handlers, the HBONE server's connections) before anything waits for the
	// open ones, so it is drained like the others instead of dying with the process.
	p.serving.Wait()
	p.log.Info("Draining: no new connections; waiting for open ones", "open", p.conns.len())

	var wg sync.WaitGroup
	var shutdownErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		shutdownErr = p.server.Shutdown(ctx)
	}()
	done := make(chan struct{})
	go func() {
		p.handlers.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		n := p.conns.closeAll()
		p.log.Info("Drain deadline reached; closing the remaining connections", "closed", n)
		<-done
	}
	wg.Wait()
	p.serving.Wait()
	_ = p.pool.Close()
	if err == nil && shutdownErr != nil && !errors.Is(shutdownErr, hbone.ErrServerClosed) {
		err = shutdownErr
	}
	return err
}

// Close stops everything at once.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Drain(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// OpenConnections is the number of connections the proxy relays now.
func (p *Proxy) OpenConnections() int { return p.conns.len() }

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}
