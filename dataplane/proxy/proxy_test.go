package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/hbone"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	sleepID = identity.New(td, "default", "sleep")
	echoID  = identity.New(td, "default", "echo")
	wpID    = identity.New(td, "default", "waypoint")
)

func TestRoutes(t *testing.T) {
	m := startMesh(t, baseResources())
	cases := []struct {
		name   string
		dst    netip.AddrPort
		prefix []string // any of
	}{
		{"workload address over HBONE", netip.AddrPortFrom(serverAddr, 8080), []string{"server:"}},
		{"service VIP balanced over its endpoints", netip.AddrPortFrom(vip, 80), []string{"server:", "server2:"}},
		{"service with a waypoint", netip.MustParseAddrPort("127.0.10.30:80"), []string{"server:", "server2:"}},
		{"passthrough to a destination outside the mesh", netip.AddrPortFrom(outsideAddr, 9000), []string{"outside:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := m.send(t, tc.dst, "hello")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Or(HavePrefix(tc.prefix[0]+"hello"), HavePrefix(tc.prefix[len(tc.prefix)-1]+"hello")))
		})
	}

	t.Run("round robin reaches both endpoints", func(t *testing.T) {
		g := NewWithT(t)
		seen := map[string]bool{}
		for range 6 {
			got, err := m.send(t, netip.AddrPortFrom(vip, 80), "x")
			g.Expect(err).NotTo(HaveOccurred())
			seen[strings.SplitN(got, ":", 2)[0]] = true
		}
		g.Expect(seen).To(HaveKey("server"))
		g.Expect(seen).To(HaveKey("server2"))
	})

	t.Run("identities and bytes in metrics and access logs", func(t *testing.T) {
		g := NewWithT(t)
		_, err := m.send(t, netip.AddrPortFrom(serverAddr, 8080), "12345")
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(func() float64 {
			return testutil.ToFloat64(m.metricCounter("node-b", "istio_tcp_received_bytes_total", "destination", sleepID, echoID))
		}).Should(BeNumerically(">=", 5))
		g.Expect(testutil.ToFloat64(m.metricCounter("node-a", "istio_tcp_connections_opened_total", "source", sleepID, echoID))).To(BeNumerically(">=", 1))

		g.Eventually(m.logs.accessLines).Should(ContainElement(And(
			HaveKeyWithValue("direction", "inbound"),
			HaveKeyWithValue("srcIdentity", sleepID.String()),
			HaveKeyWithValue("dstWorkload", "server"),
			HaveKeyWithValue("result", "ok"),
		)))
		// Through the waypoint, the node proxy sees the waypoint's identity, and the waypoint reports.
		_, err = m.send(t, netip.MustParseAddrPort("127.0.10.30:80"), "via")
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(m.logs.accessLines).Should(ContainElement(And(
			HaveKeyWithValue("direction", "inbound"), HaveKeyWithValue("srcIdentity", wpID.String()),
		)))
		g.Expect(testutil.ToFloat64(m.metricCounter("waypoint", "istio_tcp_connections_opened_total", "waypoint", sleepID, echoID))).To(BeNumerically(">=", 1))
	})
}

// metricCounter finds the connection counter of a reporter between two principals.
func (m *mesh) metricCounter(proxyName, metric, reporter string, src, dst identity.Identity) collectorFor {
	return collectorFor{m: m, proxy: proxyName, metric: metric, labels: map[string]string{
		"reporter": reporter, "source_principal": src.String(), "destination_principal": dst.String(),
	}}
}

func TestAuthorization(t *testing.T) {
	res := baseResources()
	res.Policies = []*api.Authorization{{
		Name: "deny-sleep", Namespace: "default", Scope: api.Scope_NAMESPACE, Action: api.Action_DENY,
		Rules: []*api.Rule{{Clauses: []*api.Clause{{Matches: []*api.Match{{
			Principals: []*api.StringMatch{{MatchType: &api.StringMatch_Exact{Exact: sleepID.Principal()}}},
		}}}}}},
	}}
	m := startMesh(t, res)
	g := NewWithT(t)
	got, err := m.send(t, netip.AddrPortFrom(serverAddr, 8080), "hello")
	g.Expect(got).To(BeEmpty(), "a denied connection carries no data")
	_ = err
	g.Eventually(m.logs.accessLines).Should(ContainElement(And(
		HaveKeyWithValue("direction", "inbound"), HaveKeyWithValue("result", "denied"), HaveKeyWithValue("policy", "default/deny-sleep"),
	)))
	g.Eventually(m.logs.accessLines).Should(ContainElement(And(
		HaveKeyWithValue("direction", "outbound"), HaveKeyWithValue("result", "denied"),
	)))

	// The passthrough path is not affected.
	got, err = m.send(t, netip.AddrPortFrom(outsideAddr, 9000), "hi")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal("outside:hi"))
}

func TestPolicyChangeClosesOpenConnections(t *testing.T) {
	m := startMesh(t, baseResources())
	g := NewWithT(t)
	c := m.net.dialVia(t, clientAddr, netip.AddrPortFrom(clientAddr, 15001), netip.AddrPortFrom(serverAddr, 8080))
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "ping")
	g.Expect(err).NotTo(HaveOccurred())
	buf := make([]byte, len("server:ping"))
	_, err = io.ReadFull(c, buf)
	g.Expect(err).NotTo(HaveOccurred())

	// An unrelated policy change keeps it open.
	res := baseResources()
	res.Policies = []*api.Authorization{{Name: "other-ns", Namespace: "elsewhere", Scope: api.Scope_NAMESPACE, Action: api.Action_DENY,
		Rules: []*api.Rule{{}}}}
	g.Expect(m.store.Replace(res)).To(Succeed())
	time.Sleep(200 * time.Millisecond)
	_, err = io.WriteString(c, "again")
	g.Expect(err).NotTo(HaveOccurred())
	buf = make([]byte, len("again"))
	_, err = io.ReadFull(c, buf)
	g.Expect(err).NotTo(HaveOccurred())

	// An ALLOW policy that does not cover the client closes it.
	res.Policies = append(res.Policies, &api.Authorization{Name: "only-others", Namespace: "default", Scope: api.Scope_NAMESPACE, Action: api.Action_ALLOW,
		Rules: []*api.Rule{{Clauses: []*api.Clause{{Matches: []*api.Match{{
			Principals: []*api.StringMatch{{MatchType: &api.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/someone-else"}}},
		}}}}}}})
	g.Expect(m.store.Replace(res)).To(Succeed())
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	g.Expect(err).NotTo(HaveOccurred(), "the connection ends (EOF or reset), within the deadline")
	g.Eventually(m.logs.accessLines).Should(ContainElement(And(HaveKeyWithValue("direction", "inbound"), HaveKeyWithValue("result", "denied"))))
	g.Eventually(m.nodeB.OpenConnections).Should(BeZero())
}

func TestInboundPlaintext(t *testing.T) {
	res := baseResources()
	m := startMesh(t, res)
	g := NewWithT(t)
	plain := func() (string, error) {
		c := m.net.dialVia(t, outsideAddr, netip.AddrPortFrom(serverAddr, 15006), netip.AddrPortFrom(serverAddr, 8080))
		defer func() { _ = c.Close() }()
		return exchange(c, "plain")
	}
	got, err := plain()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal("server:plain"), "without policies plaintext is allowed")

	// Istio's way to require mTLS: DENY when there is no principal.
	res.Policies = []*api.Authorization{{Name: "require-mtls", Namespace: "default", Scope: api.Scope_NAMESPACE, Action: api.Action_DENY,
		Rules: []*api.Rule{{Clauses: []*api.Clause{{Matches: []*api.Match{{
			NotPrincipals: []*api.StringMatch{{MatchType: &api.StringMatch_Presence{Presence: true}}},
		}}}}}}}}
	g.Expect(m.store.Replace(res)).To(Succeed())
	g.Eventually(func() string { got, _ := plain(); return got }).Should(BeEmpty())
	got, err = m.send(t, netip.AddrPortFrom(serverAddr, 8080), "mtls")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal("server:mtls"), "mTLS traffic still passes")
}

// hboneClient talks HBONE to a node proxy directly, as another proxy would.
func hboneClient(t *testing.T, m *mesh) *hbone.Pool {
	t.Helper()
	p := hbone.NewPool(hbone.PoolConfig{
		GetClientCertificate: func(id identity.Identity) (*tlsCertificate, error) {
			return m.issuer.Certificate(context.Background(), id)
		},
		Roots: m.issuer.Roots,
	})
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestInboundBadRequests(t *testing.T) {
	m := startMesh(t, baseResources())
	pool := hboneClient(t, m)
	key := hbone.PoolKey{Source: sleepID, Destination: echoID, Address: netip.AddrPortFrom(serverAddr, 15008)}
	cases := []struct {
		name      string
		authority netip.AddrPort
		status    int
	}{
		{"an unknown workload", netip.MustParseAddrPort("127.0.7.7:80"), http.StatusServiceUnavailable},
		{"a workload of another node", netip.AddrPortFrom(clientAddr, 80), http.StatusBadRequest},
		{"another workload of this node than the listener's", netip.AddrPortFrom(server2Addr, 8080), http.StatusBadRequest},
		{"a port nothing listens on", netip.AddrPortFrom(serverAddr, 1), http.StatusServiceUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c, err := pool.Connect(context.Background(), key, tc.authority, nil)
			if c != nil {
				_ = c.Close()
			}
			g.Expect(hbone.StatusOf(err)).To(Equal(tc.status))
		})
	}
	t.Run("the proxy still serves", func(t *testing.T) {
		g := NewWithT(t)
		c, err := pool.Connect(context.Background(), key, netip.AddrPortFrom(serverAddr, 8080), nil)
		g.Expect(err).NotTo(HaveOccurred())
		got, err := exchange(c, "ok")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal("server:ok"))
	})
	t.Run("the waypoint refuses a destination that does not use it", func(t *testing.T) {
		g := NewWithT(t)
		wkey := hbone.PoolKey{Source: sleepID, Destination: wpID, Address: netip.AddrPortFrom(wpAddr, 15008)}
		c, err := pool.Connect(context.Background(), wkey, netip.AddrPortFrom(vip, 80), nil)
		if c != nil {
			_ = c.Close()
		}
		g.Expect(hbone.StatusOf(err)).To(Equal(http.StatusBadRequest))
	})
}

func TestLeavingTheMeshKeepsOpenConnections(t *testing.T) {
	m := startMesh(t, baseResources())
	g := NewWithT(t)
	c := m.net.dialVia(t, clientAddr, netip.AddrPortFrom(clientAddr, 15001), netip.AddrPortFrom(serverAddr, 8080))
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "a")
	g.Expect(err).NotTo(HaveOccurred())
	buf := make([]byte, len("server:a"))
	_, err = io.ReadFull(c, buf)
	g.Expect(err).NotTo(HaveOccurred())

	// The client leaves the mesh: its listeners close, its open connection goes on.
	res := baseResources()
	res.Workloads[0].Tunnel = api.TunnelProtocol_NONE
	g.Expect(m.store.Replace(res)).To(Succeed())
	g.Eventually(func() error {
		cc, err := net.DialTimeout("tcp", netip.AddrPortFrom(clientAddr, 15001).String(), time.Second)
		if err == nil {
			_ = cc.Close()
		}
		return err
	}).ShouldNot(Succeed())
	_, err = io.WriteString(c, "b")
	g.Expect(err).NotTo(HaveOccurred())
	_, err = io.ReadFull(c, buf[:1])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(buf[:1])).To(Equal("b"))
}

func TestDrainLetsConnectionsFinishWhileASuccessorTakesNewOnes(t *testing.T) {
	m := startMesh(t, baseResources())
	g := NewWithT(t)
	// An open connection through node-b before the drain.
	c := m.net.dialVia(t, clientAddr, netip.AddrPortFrom(clientAddr, 15001), netip.AddrPortFrom(serverAddr, 8080))
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err := io.WriteString(c, "before")
	g.Expect(err).NotTo(HaveOccurred())
	buf := make([]byte, len("server:before"))
	_, err = io.ReadFull(c, buf)
	g.Expect(err).NotTo(HaveOccurred())

	// A successor for node-b binds the same ports (SO_REUSEPORT) while the old one still runs.
	successor, err := New(Config{Mode: NodeMode, Node: "node-b", Store: m.store, Certs: m.issuer, Network: m.net, Log: m.nodeB.log.WithName("successor")})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = successor.Run(ctx) }()
	defer func() { cancel(); <-done; _ = successor.Close() }()
	g.Eventually(successor.listenerCount).Should(Equal(2))

	drainCtx, drainCancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer drainCancel()
	drained := make(chan error, 1)
	go func() { drained <- m.nodeB.Drain(drainCtx) }()

	// New connections keep working: the successor takes them.
	g.Eventually(func() (string, error) { return m.send(t, netip.AddrPortFrom(serverAddr, 8080), "new") }).Should(Equal("server:new"))
	// The old connection keeps working during the drain.
	_, err = io.WriteString(c, "during")
	g.Expect(err).NotTo(HaveOccurred())
	buf = make([]byte, len("during"))
	_, err = io.ReadFull(c, buf)
	g.Expect(err).NotTo(HaveOccurred())
	// At the deadline the old proxy closes what is left and returns.
	g.Eventually(drained, 10*time.Second).Should(Receive(MatchError(context.DeadlineExceeded)))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	g.Expect(err).NotTo(HaveOccurred())
}

func (p *Proxy) listenerCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.listeners)
}

func TestReadinessWaitsForCertificates(t *testing.T) {
	g := NewWithT(t)
	m := startMesh(t, baseResources())
	_ = m
	res := state.Resources{Workloads: []*api.Workload{{Name: "x", Namespace: "ns", Addresses: [][]byte{ip("127.0.4.5")}, Node: "node-z", ServiceAccount: "x"}}}
	store := state.NewStore(td)
	g.Expect(store.Replace(res)).To(Succeed())
	iss := newIssuer(t)
	iss.Refuse(identity.New(td, "ns", "x"), true)
	ready := newReadiness()
	p, err := New(Config{Mode: NodeMode, Node: "node-z", Store: store, Certs: iss, Network: newTestNetwork(), Ready: ready})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	defer func() { cancel(); <-done; _ = p.Close() }()
	g.Consistently(ready.Ready, 300*time.Millisecond).Should(BeFalse())
	iss.Refuse(identity.New(td, "ns", "x"), false)
	g.Expect(store.Apply(state.Delta{Upsert: state.Resources{Workloads: []*api.Workload{{Name: "y", Namespace: "ns", Node: "node-other"}}}})).To(Succeed())
	g.Eventually(ready.Ready).Should(BeTrue())
}

// A waypoint whose certificate cannot be had at first becomes ready once the CA issues it, without any
// change of configuration: the periodic retry fetches it again.
func TestWaypointReadinessRetriesCertificate(t *testing.T) {
	g := NewWithT(t)
	store := state.NewStore(td)
	g.Expect(store.Replace(state.Resources{})).To(Succeed())
	iss := newIssuer(t)
	wpID := identity.New(td, "ns", "wp")
	iss.Refuse(wpID, true)
	ready := newReadiness()
	p, err := New(Config{Mode: WaypointMode, Waypoint: WaypointConfig{Key: "ns/wp", Identity: wpID, Listen: netip.MustParseAddrPort("127.0.4.9:0")},
		Store: store, Certs: iss, Network: newTestNetwork(), Ready: ready, RetryInterval: 50 * time.Millisecond})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	defer func() { cancel(); <-done; _ = p.Close() }()
	g.Consistently(ready.Ready, 300*time.Millisecond).Should(BeFalse())
	iss.Refuse(wpID, false)
	g.Eventually(ready.Ready, 5*time.Second).Should(BeTrue())
}

// A proxy fed by a control plane is not ready before the full state arrived, even with nothing to serve
// yet: an empty snapshot is not a synced one.
func TestReadinessWaitsForSyncedConfig(t *testing.T) {
	g := NewWithT(t)
	store := state.NewStore(td)
	iss := newIssuer(t)
	ready := newReadiness()
	synced := make(chan struct{})
	p, err := New(Config{Mode: NodeMode, Node: "node-z", Store: store, Certs: iss, Network: newTestNetwork(), Ready: ready, ConfigSynced: synced})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	defer func() { cancel(); <-done; _ = p.Close() }()
	res := state.Resources{Workloads: []*api.Workload{{Name: "x", Namespace: "ns", Addresses: [][]byte{ip("127.0.4.6")}, Node: "node-z", ServiceAccount: "x"}}}
	g.Expect(store.Replace(res)).To(Succeed())
	g.Consistently(ready.Ready, 300*time.Millisecond).Should(BeFalse())
	close(synced)
	g.Eventually(ready.Ready).Should(BeTrue())
	g.Expect(p.listenerCount()).To(Equal(1))
}

// Connections that arrive while a proxy starts draining all complete: the ones its listeners had
// accepted are drained like the open ones, the rest go to the successor. Bounded load: 4 clients, at most
// 400 connections each, for at most 10 s.
func TestDrainHandOverUnderLoadLosesNoConnection(t *testing.T) {
	m := startMesh(t, baseResources())
	g := NewWithT(t)
	successor, err := New(Config{Mode: NodeMode, Node: "node-b", Store: m.store, Certs: m.issuer, Network: m.net, Log: m.nodeB.log.WithName("successor")})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = successor.Run(ctx) }()
	defer func() { cancel(); <-done; _ = successor.Close() }()
	g.Eventually(successor.listenerCount).Should(Equal(2))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(10 * time.Second)
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 400 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				var got string
				c, err := m.net.tryDialVia(clientAddr, netip.AddrPortFrom(clientAddr, 15001), netip.AddrPortFrom(serverAddr, 8080))
				if err == nil {
					got, err = exchange(c, "x")
					_ = c.Close()
				}
				sent.Add(1)
				if err != nil || got != "server:x" {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%q %v", got, err))
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	drainCtx, drainCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer drainCancel()
	g.Expect(m.nodeB.Drain(drainCtx)).To(Succeed(), "short connections finish well within the drain window")
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	g.Expect(sent.Load()).To(BeNumerically(">", 20), "the load ran")
	g.Expect(failed.Load()).To(BeZero(), "of %d connections; first failure: %v", sent.Load(), firstErr.Load())
}
