package xds

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	nodeSub = NodeInfo{Role: RoleNode, NodeName: "node1"}
	wpSub   = NodeInfo{Role: RoleWaypoint, Namespace: "app", Waypoint: "wp"}
	wp2Sub  = NodeInfo{Role: RoleWaypoint, Namespace: "app", Waypoint: "wp2"}
)

func workload(ns, name string, ip byte, extra ...func(*api.Workload)) *api.Workload {
	w := &api.Workload{Name: name, Namespace: ns, Addresses: [][]byte{{10, 0, 0, ip}}, Node: "node1"}
	for _, f := range extra {
		f(w)
	}
	return w
}

func wlChange(w *api.Workload, nodes bool, wps ...string) Change {
	return Change{TypeURL: api.WorkloadType, Name: w.GetNamespace() + "/" + w.GetName(), Resource: w, Nodes: nodes, Waypoints: wps}
}

func svcChange(ns, name string, wps ...string) Change {
	return Change{TypeURL: api.ServiceType, Name: ns + "/" + name, Nodes: true, Waypoints: wps,
		Resource: &api.Service{Name: name, Namespace: ns, Addresses: [][]byte{{10, 96, 0, 1}}, Ports: []*api.ServicePort{{Port: 80}}}}
}

func polChange(ns, name string, scope api.Scope, nodes bool, wps ...string) Change {
	p := &api.Authorization{Name: name, Namespace: ns, Scope: scope, Action: api.Action_DENY}
	if scope == api.Scope_WAYPOINT {
		p.Waypoint = "wp"
	}
	return Change{TypeURL: api.AuthorizationType, Name: ns + "/" + name, Resource: p, Nodes: nodes, Waypoints: wps}
}

func removal(typeURL, name string) Change { return Change{TypeURL: typeURL, Name: name} }

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestScoping: node proxies get every node-visible resource, a waypoint only its scope, and scope moves
// send removals and additions.
func TestScoping(t *testing.T) {
	g := NewWithT(t)
	srv := newServerForTest(t, testLogger(t))
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	srv.Apply([]Change{
		wlChange(workload("app", "a", 1), true),
		wlChange(workload("app", "b", 2), true, "app/wp"),
		wlChange(workload("app", "c", 3), true, "app/wp2"),
		svcChange("app", "s1", "app/wp"),
		svcChange("app", "s2"),
		polChange("app", "ns-wide", api.Scope_NAMESPACE, true),
		polChange("app", "svc-pol", api.Scope_SERVICE, false, "app/wp"),
		polChange("app", "wp-pol", api.Scope_WAYPOINT, false, "app/wp"),
	})
	node := dialRaw(t, h, nodeSub, nodeToken, rawOpts{})
	wp := dialRaw(t, h, wpSub, "wp-token", rawOpts{})
	wp2 := dialRaw(t, h, wp2Sub, "wp2-token", rawOpts{})
	for _, s := range []*rawSub{node, wp, wp2} {
		g.Eventually(s.syncedTypes).Should(Equal(3))
	}
	g.Expect(keys(node.names(typeWorkload))).To(ConsistOf("app/a", "app/b", "app/c"))
	g.Expect(keys(node.names(typeService))).To(ConsistOf("app/s1", "app/s2"))
	g.Expect(keys(node.names(typeAuthorization))).To(ConsistOf("app/ns-wide"))
	g.Expect(keys(wp.names(typeWorkload))).To(ConsistOf("app/b"))
	g.Expect(keys(wp.names(typeService))).To(ConsistOf("app/s1"))
	g.Expect(keys(wp.names(typeAuthorization))).To(ConsistOf("app/svc-pol", "app/wp-pol"))
	g.Expect(keys(wp2.names(typeWorkload))).To(ConsistOf("app/c"))
	g.Expect(wp2.names(typeService)).To(BeEmpty())

	// b moves from wp to wp2; c changes content; the service policy is removed.
	srv.Apply([]Change{
		wlChange(workload("app", "b", 2), true, "app/wp2"),
		wlChange(workload("app", "c", 4), true, "app/wp2"),
		removal(api.AuthorizationType, "app/svc-pol"),
	})
	g.Eventually(func() []string { return keys(wp.names(typeWorkload)) }).Should(BeEmpty())
	g.Eventually(func() []string { return keys(wp.names(typeAuthorization)) }).Should(ConsistOf("app/wp-pol"))
	g.Eventually(func() []string { return keys(wp2.names(typeWorkload)) }).Should(ConsistOf("app/b", "app/c"))
	// The node proxy saw c's new version but not b's scope move (same bytes).
	g.Eventually(func() string { return node.names(typeWorkload)["app/c"] }).ShouldNot(Equal(""))
	for _, r := range node.all() {
		if r.GetSystemVersionInfo() == InitialSyncDone {
			continue
		}
		for _, res := range r.GetResources() {
			g.Expect(res.GetName()).NotTo(Equal("app/b"), "node proxy was re-sent an unchanged resource")
		}
	}
	g.Expect(srv.Subscribers()).To(Equal(3))
}

// TestInitialResourceVersions: a reconnecting subscriber that says what it holds is sent only what
// changed, and removals of what is gone.
func TestInitialResourceVersions(t *testing.T) {
	g := NewWithT(t)
	srv := newServerForTest(t, testLogger(t))
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	var initial []Change
	for i := range 50 {
		initial = append(initial, wlChange(workload("app", fmt.Sprintf("w%d", i), byte(i)), true))
	}
	srv.Apply(append(initial, svcChange("app", "s1"), polChange("app", "p", api.Scope_NAMESPACE, true)))
	first := dialRaw(t, h, nodeSub, nodeToken, rawOpts{})
	g.Eventually(first.syncedTypes).Should(Equal(3))
	var held [numTypes]map[string]string
	for typ := range numTypes {
		held[typ] = first.names(typ)
	}
	g.Expect(held[typeWorkload]).To(HaveLen(50))
	first.close()

	held[typeService]["app/ghost"] = "1" // something the server never had (or removed meanwhile)
	srv.Apply([]Change{
		wlChange(workload("app", "w7", 77), true),
		removal(api.WorkloadType, "app/w8"),
		wlChange(workload("app", "new", 200), true),
	})
	second := dialRaw(t, h, nodeSub, nodeToken, rawOpts{initial: held})
	g.Eventually(second.syncedTypes).Should(Equal(3))
	var sent, removed []string
	for _, r := range second.all() {
		for _, res := range r.GetResources() {
			sent = append(sent, res.GetName())
		}
		removed = append(removed, r.GetRemovedResources()...)
	}
	g.Expect(sent).To(ConsistOf("app/w7", "app/new"))
	g.Expect(removed).To(ConsistOf("app/w8", "app/ghost"))
}

// TestNACKNotResent: a NACKed version is remembered and not sent again, also on a new wildcard
// subscription on the same stream; a newer version is sent.
func TestNACKNotResent(t *testing.T) {
	g := NewWithT(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	g.Expect(err).NotTo(HaveOccurred())
	srv, err := NewServer(ServerOptions{Authenticator: testAuth(), MeshNamespace: testMeshNS, Logger: testLogger(t), Metrics: m})
	g.Expect(err).NotTo(HaveOccurred())
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	bad := workload("app", "bad", 1, func(w *api.Workload) { w.CanonicalName = "v1" })
	srv.Apply([]Change{wlChange(bad, true), wlChange(workload("app", "ok", 2), true)})
	sub := dialRaw(t, h, nodeSub, nodeToken, rawOpts{nack: func(r *discoveryv3.DeltaDiscoveryResponse) string {
		for _, res := range r.GetResources() {
			if res.GetName() == "app/bad" {
				return "Workload app/bad: refused"
			}
		}
		return ""
	}})
	g.Eventually(sub.syncedTypes).Should(Equal(3))
	g.Eventually(func() float64 { return testutil.ToFloat64(m.nacks.WithLabelValues("Workload")) }).Should(Equal(1.0))

	// Other changes flow; the refused version of bad is never sent again, even when it leaves and
	// re-enters the node proxies' audience with the same bytes, or on a new subscription.
	for i := range 5 {
		srv.Apply([]Change{wlChange(workload("app", "ok", byte(10+i)), true)})
		time.Sleep(10 * time.Millisecond)
	}
	srv.Apply([]Change{wlChange(bad, false, "app/wp")})
	srv.Apply([]Change{wlChange(bad, true)})
	g.Expect(sub.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: api.WorkloadType, ResourceNamesSubscribe: []string{"*"}})).To(Succeed())
	g.Eventually(func() int { return countNamed(sub, "app/ok") }).Should(BeNumerically(">=", 7))
	time.Sleep(100 * time.Millisecond)
	g.Expect(countNamed(sub, "app/bad")).To(Equal(1))
	g.Expect(testutil.ToFloat64(m.nacks.WithLabelValues("Workload"))).To(Equal(1.0))

	bad2 := workload("app", "bad", 1, func(w *api.Workload) { w.CanonicalName = "v2" })
	srv.Apply([]Change{wlChange(bad2, true)})
	g.Eventually(func() int { return countNamed(sub, "app/bad") }).Should(Equal(2))
}

func countNamed(s *rawSub, name string) int {
	n := 0
	for _, r := range s.all() {
		for _, res := range r.GetResources() {
			if res.GetName() == name {
				n++
			}
		}
	}
	return n
}

// TestSlowSubscriber: a subscriber that stops reading neither blocks Apply nor delays another subscriber,
// and its queue holds at most one entry per resource.
func TestSlowSubscriber(t *testing.T) {
	g := NewWithT(t)
	srv := newServerForTest(t, testLogger(t))
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	big := strings.Repeat("x", 16<<10)
	const n = 100
	apply := func(round int) time.Duration {
		changes := make([]Change, 0, n)
		for i := range n {
			changes = append(changes, wlChange(workload("app", fmt.Sprintf("w%d", i), byte(i), func(w *api.Workload) {
				w.CanonicalName = fmt.Sprintf("%s-%d", big, round)
			}), true))
		}
		start := time.Now()
		srv.Apply(changes)
		return time.Since(start)
	}
	apply(0)
	dialRaw(t, h, nodeSub, nodeToken, rawOpts{noRead: true}) // never reads
	fast := dialRaw(t, h, nodeSub, nodeToken, rawOpts{})
	g.Eventually(fast.syncedTypes).Should(Equal(3))
	var slowest time.Duration
	for round := 1; round <= 30; round++ { // 30 rounds x 1.6 MB: far beyond the slow stream's windows
		slowest = max(slowest, apply(round))
	}
	want := fmt.Sprintf("%s-%d", big, 30)
	g.Eventually(func() string {
		for _, r := range fast.all() {
			for _, res := range r.GetResources() {
				if res.GetName() == "app/w99" {
					w := &api.Workload{}
					_ = res.GetResource().UnmarshalTo(w)
					if w.GetCanonicalName() == want {
						return "latest"
					}
				}
			}
		}
		return ""
	}, 10*time.Second).Should(Equal("latest"))
	g.Expect(slowest).To(BeNumerically("<", time.Second), "Apply waited for a subscriber")

	srv.mu.RLock()
	var slowState *subscriber
	for s := range srv.nodeSubs {
		slowState = s
		s.mu.Lock()
		pending := len(s.pending[typeWorkload])
		s.mu.Unlock()
		g.Expect(pending).To(BeNumerically("<=", n))
	}
	srv.mu.RUnlock()
	g.Expect(slowState).NotTo(BeNil())
	t.Logf("slowest Apply %s", slowest)
}

// TestRefusedSubscribers: tokens and roles are checked.
func TestRefusedSubscribers(t *testing.T) {
	srv := newServerForTest(t, testLogger(t))
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	for _, tc := range []struct {
		name  string
		node  NodeInfo
		token string
		code  codes.Code
	}{
		{"no token", nodeSub, "", codes.Unauthenticated},
		{"unknown token", nodeSub, "nope", codes.Unauthenticated},
		{"workload as node proxy", nodeSub, "sleep", codes.PermissionDenied},
		{"node proxy of another node", NodeInfo{Role: RoleNode, NodeName: "node2"}, "node1-only", codes.PermissionDenied},
		{"another waypoint's account", wpSub, "wp2-token", codes.PermissionDenied},
		{"no role", NodeInfo{}, nodeToken, codes.InvalidArgument},
		{"waypoint without name", NodeInfo{Role: RoleWaypoint, Namespace: "app"}, "wp-token", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			s := dialRaw(t, h, tc.node, tc.token, rawOpts{})
			g.Eventually(s.error).Should(HaveOccurred())
			g.Expect(status.Code(s.error())).To(Equal(tc.code), "%v", s.error())
		})
	}
	g := NewWithT(t)
	ok := dialRaw(t, h, NodeInfo{Role: RoleNode, NodeName: "node1"}, "node1-only", rawOpts{})
	g.Eventually(ok.syncedTypes).Should(Equal(3))
}

// TestClientReconnects: clients keep their state while the server is gone, reconnect to a restarted
// server, and are sent only what changed.
func TestClientReconnects(t *testing.T) {
	g := NewWithT(t)
	p := newPKI(t, serverID())
	var initial []Change
	for i := range 100 {
		initial = append(initial, wlChange(workload("app", fmt.Sprintf("w%d", i), byte(i)), true))
	}
	initial = append(initial, svcChange("app", "s1"), polChange("app", "p", api.Scope_NAMESPACE, true))
	srv1 := newServerForTest(t, testLogger(t))
	srv1.Apply(initial)
	h1 := serve(t, srv1, p, "127.0.0.1:0")
	addr := h1.addr
	c1, st1 := startClient(t, h1, nodeSub, nodeToken, testLogger(t))
	c2, st2 := startClient(t, h1, NodeInfo{Role: RoleNode, NodeName: "node2"}, nodeToken, testLogger(t))
	for _, c := range []*xdsclient.Client{c1, c2} {
		g.Eventually(c.Synced(), 5*time.Second).Should(BeClosed())
		g.Expect(c.Connected()).To(BeTrue())
	}
	g.Expect(countsOf(st1)).To(Equal([3]int{100, 1, 1}))

	h1.stop()
	g.Eventually(c1.Connected).Should(BeFalse())
	g.Consistently(func() [3]int { return countsOf(st1) }, 300*time.Millisecond).Should(Equal([3]int{100, 1, 1}))

	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	g.Expect(err).NotTo(HaveOccurred())
	srv2, err := NewServer(ServerOptions{Authenticator: testAuth(), MeshNamespace: testMeshNS, Logger: testLogger(t), Metrics: m})
	g.Expect(err).NotTo(HaveOccurred())
	next := append([]Change(nil), initial...)
	next[0] = wlChange(workload("app", "w0", 250), true) // changed
	next = append(next[:1], next[2:]...)                 // w1 removed
	next = append(next, wlChange(workload("app", "added", 251), true))
	srv2.Apply(next)
	serve(t, srv2, p, addr)
	for _, c := range []*xdsclient.Client{c1, c2} {
		g.Eventually(c.Connected, 5*time.Second).Should(BeTrue())
	}
	g.Eventually(func() [3]int { return countsOf(st1) }, 5*time.Second).Should(Equal([3]int{100, 1, 1}))
	g.Eventually(func() bool { return st2.Load().Workload("app/added") != nil && st2.Load().Workload("app/w1") == nil }).Should(BeTrue())
	g.Expect(st1.Load().Workload("app/w0").Addresses[0].String()).To(Equal("10.0.0.250"))
	// Each client was sent w0 and "added", and the removal of w1: 3 resources each, not 102.
	g.Eventually(func() float64 { return testutil.ToFloat64(m.pushed.WithLabelValues("Workload")) }).Should(Equal(6.0))
	g.Expect(testutil.ToFloat64(m.pushed.WithLabelValues("Service"))).To(Equal(0.0))
}

func countsOf(st *state.Store) [3]int {
	w, s, p := st.Load().Counts()
	return [3]int{w, s, p}
}

// TestClientNACKsInvalidResources: the client applies the valid resources of a response, NACKs the
// invalid ones with their error, and the server does not send them again.
func TestClientNACKsInvalidResources(t *testing.T) {
	g := NewWithT(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	g.Expect(err).NotTo(HaveOccurred())
	srv, err := NewServer(ServerOptions{Authenticator: testAuth(), MeshNamespace: testMeshNS, Logger: testLogger(t), Metrics: m})
	g.Expect(err).NotTo(HaveOccurred())
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	srv.Apply([]Change{
		wlChange(workload("app", "good", 1), true),
		wlChange(&api.Workload{Name: "bad", Namespace: "app", Addresses: [][]byte{{1, 2, 3}}}, true),
	})
	c, st := startClient(t, h, nodeSub, nodeToken, testLogger(t))
	g.Eventually(c.Synced(), 5*time.Second).Should(BeClosed())
	g.Expect(st.Load().Workload("app/good")).NotTo(BeNil())
	g.Expect(st.Load().Workload("app/bad")).To(BeNil())
	g.Eventually(func() float64 { return testutil.ToFloat64(m.nacks.WithLabelValues("Workload")) }).Should(Equal(1.0))
	srv.Apply([]Change{wlChange(workload("app", "good", 9), true)})
	g.Eventually(func() string { return st.Load().Workload("app/good").Addresses[0].String() }).Should(Equal("10.0.0.9"))
	g.Expect(testutil.ToFloat64(m.nacks.WithLabelValues("Workload"))).To(Equal(1.0))
}

// TestClientVerifiesServer: a client that expects another identity never accepts the server.
func TestClientVerifiesServer(t *testing.T) {
	g := NewWithT(t)
	srv := newServerForTest(t, testLogger(t))
	h := serve(t, srv, newPKI(t, serverID()), "127.0.0.1:0")
	st := state.NewStore(testTD)
	dir := t.TempDir()
	c, err := xdsclient.NewClient(xdsclient.ClientOptions{
		Address: h.addr, Identity: "spiffe://" + testTD + "/ns/" + testMeshNS + "/sa/impostor", RootCertFile: h.pki.rootFile,
		TokenFile: writeFile(t, dir, "token", nodeToken), Node: nodeSub, Store: st, InitialBackoff: 10 * time.Millisecond,
	})
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	g.Consistently(c.Connected, 300*time.Millisecond).Should(BeFalse())
	g.Expect(srv.Subscribers()).To(Equal(0))
	cancel()
	<-done
}
