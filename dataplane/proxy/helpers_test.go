package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/testpki"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

const td = "cluster.local"

type issuer = testpki.Issuer

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	i, err := testpki.New(td)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// testNetwork is a LocalNetwork whose "iptables" is a table: the original destination of a connection
// is what the test said its client wanted to reach.
type testNetwork struct {
	LocalNetwork
	mu      sync.Mutex
	targets map[netip.AddrPort]netip.AddrPort // client address -> intended destination
}

func newTestNetwork() *testNetwork {
	return &testNetwork{targets: map[netip.AddrPort]netip.AddrPort{}}
}

func (n *testNetwork) OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	remote := netip.MustParseAddrPort(c.RemoteAddr().String())
	n.mu.Lock()
	defer n.mu.Unlock()
	dst, ok := n.targets[remote]
	if !ok {
		return netip.AddrPort{}, errors.New("not redirected")
	}
	return dst, nil
}

// dialVia plays a captured connection: the client at src connects to the proxy's listener at via,
// intending to reach dst.
func (n *testNetwork) dialVia(t testing.TB, src netip.Addr, via, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := n.tryDialVia(src, via, dst)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryDialVia is dialVia for goroutines other than the test's: it returns the error.
func (n *testNetwork) tryDialVia(src netip.Addr, via, dst netip.AddrPort) (net.Conn, error) {
	for range 10 {
		c, err := n.dialOnce(src, via, dst)
		// The reserved source port can be taken again between the reservation and the dial (a test
		// artifact, not the proxy's doing): pick another.
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		return c, err
	}
	return nil, fmt.Errorf("no free source port on %s", src)
}

func (n *testNetwork) dialOnce(src netip.Addr, via, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	// Reserve the source port first so that the table entry exists before the proxy accepts.
	lc, err := net.Listen("tcp", netip.AddrPortFrom(src, 0).String())
	if err != nil {
		return nil, err
	}
	local := netip.MustParseAddrPort(lc.Addr().String())
	_ = lc.Close()
	n.mu.Lock()
	n.targets[local] = dst
	n.mu.Unlock()
	d.LocalAddr = net.TCPAddrFromAddrPort(local)
	return d.Dial("tcp", via.String())
}

// echoServer accepts on addr and echoes with a prefix naming itself, until the test ends.
func echoServer(t testing.TB, addr netip.AddrPort, name string) {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				_, _ = io.WriteString(c, name+":")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { _ = l.Close() })
}

// exchange writes msg, half-closes, and reads everything back.
func exchange(c net.Conn, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// syncBuffer collects log output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// accessLines returns the access-log lines logged so far, decoded.
func (s *syncBuffer) accessLines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(s.b.String(), "\n") {
		if !strings.Contains(line, telemetry.AccessLogMessage) {
			continue
		}
		m := map[string]any{}
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// mesh is the test topology: node-a (client 127.0.1.5), node-b (server 127.0.2.5, server2 127.0.2.6), a
// waypoint at 127.0.3.5, a service "echo" with VIP 127.0.10.10, a plain host outside the mesh at
// 127.0.9.9, all on loopback.
type mesh struct {
	store   *state.Store
	issuer  *issuer
	net     *testNetwork
	nodeA   *Proxy
	nodeB   *Proxy
	wp      *Proxy
	metrics map[string]*telemetry.Metrics
	logs    *syncBuffer
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

var (
	clientAddr  = netip.MustParseAddr("127.0.1.5")
	serverAddr  = netip.MustParseAddr("127.0.2.5")
	server2Addr = netip.MustParseAddr("127.0.2.6")
	wpAddr      = netip.MustParseAddr("127.0.3.5")
	vip         = netip.MustParseAddr("127.0.10.10")
	outsideAddr = netip.MustParseAddr("127.0.9.9")
)

func baseResources() state.Resources {
	return state.Resources{
		Workloads: []*api.Workload{
			{Name: "client", Namespace: "default", Addresses: [][]byte{ip("127.0.1.5")}, Node: "node-a", ServiceAccount: "sleep", CanonicalName: "sleep"},
			{Name: "server", Namespace: "default", Addresses: [][]byte{ip("127.0.2.5")}, Node: "node-b", ServiceAccount: "echo", CanonicalName: "echo",
				Services: []*api.ServiceBinding{{Service: "echo", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}}}, {Service: "echo-wp", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}}}}},
			{Name: "server2", Namespace: "default", Addresses: [][]byte{ip("127.0.2.6")}, Node: "node-b", ServiceAccount: "echo", CanonicalName: "echo",
				Services: []*api.ServiceBinding{{Service: "echo", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}}}, {Service: "echo-wp", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}}}}},
			{Name: "waypoint-0", Namespace: "default", Addresses: [][]byte{ip("127.0.3.5")}, Node: "node-c", ServiceAccount: "waypoint",
				Services: []*api.ServiceBinding{{Service: "waypoint", Ports: []*api.PortMapping{{ServicePort: 15008}}}}},
		},
		Services: []*api.Service{
			{Name: "echo", Namespace: "default", Addresses: [][]byte{ip("127.0.10.10")}, Ports: []*api.ServicePort{{Port: 80, TargetPort: 8080}}},
			{Name: "echo-wp", Namespace: "default", Addresses: [][]byte{ip("127.0.10.30")}, Ports: []*api.ServicePort{{Port: 80, TargetPort: 8080}}, Waypoint: "waypoint"},
			{Name: "waypoint", Namespace: "default", Addresses: [][]byte{ip("127.0.10.20")}, Ports: []*api.ServicePort{{Port: 15008}}},
		},
	}
}

func startMesh(t *testing.T, res state.Resources) *mesh {
	t.Helper()
	m := &mesh{store: state.NewStore(td), issuer: newIssuer(t), net: newTestNetwork(), metrics: map[string]*telemetry.Metrics{}, logs: &syncBuffer{}}
	m.net.Self = wpAddr // the waypoint's own connections leave from its address
	if err := m.store.Replace(res); err != nil {
		t.Fatal(err)
	}
	logging, err := telemetry.NewLogging(m.logs, "debug")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	start := func(name string, cfg Config) *Proxy {
		cfg.Store, cfg.Certs, cfg.Network = m.store, m.issuer, m.net
		cfg.Log = logging.Logger().WithName(name)
		cfg.Metrics = telemetry.NewMetrics()
		cfg.AccessLog = telemetry.NewAccessLog(cfg.Log)
		m.metrics[name] = cfg.Metrics
		p, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		m.done.Add(1)
		go func() {
			defer m.done.Done()
			_ = p.Run(ctx)
		}()
		return p
	}
	m.nodeA = start("node-a", Config{Mode: NodeMode, Node: "node-a"})
	m.nodeB = start("node-b", Config{Mode: NodeMode, Node: "node-b"})
	m.wp = start("waypoint", Config{Mode: WaypointMode, Waypoint: WaypointConfig{
		Key: "default/waypoint", Identity: identity.New(td, "default", "waypoint"), Listen: netip.AddrPortFrom(wpAddr, 15008),
	}})
	echoServer(t, netip.AddrPortFrom(serverAddr, 8080), "server")
	echoServer(t, netip.AddrPortFrom(server2Addr, 8080), "server2")
	echoServer(t, netip.AddrPortFrom(outsideAddr, 9000), "outside")
	t.Cleanup(m.stop)
	m.waitListening(t)
	return m
}

func (m *mesh) stop() {
	m.cancel()
	m.done.Wait()
	for _, p := range []*Proxy{m.nodeA, m.nodeB, m.wp} {
		_ = p.Close()
	}
}

// waitListening waits until every proxy listens.
func (m *mesh) waitListening(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range []netip.AddrPort{
		netip.AddrPortFrom(clientAddr, 15001), netip.AddrPortFrom(serverAddr, 15008), netip.AddrPortFrom(server2Addr, 15008),
		netip.AddrPortFrom(serverAddr, 15006), netip.AddrPortFrom(wpAddr, 15008),
	} {
		for {
			c, err := net.DialTimeout("tcp", a.String(), time.Second)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("nothing listens on %s: %v", a, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// send opens a captured connection from the client workload to dst and exchanges msg.
func (m *mesh) send(t *testing.T, dst netip.AddrPort, msg string) (string, error) {
	t.Helper()
	c := m.net.dialVia(t, clientAddr, netip.AddrPortFrom(clientAddr, 15001), dst)
	defer func() { _ = c.Close() }()
	return exchange(c, msg)
}

var _ = logr.Discard

type tlsCertificate = tls.Certificate

func newReadiness() *telemetry.Readiness { return telemetry.NewReadiness(ReadyWorkloads) }

// collectorFor reads one counter of a proxy's registry by labels.
type collectorFor struct {
	m      *mesh
	proxy  string
	metric string
	labels map[string]string
}

// Describe and Collect make collectorFor usable with testutil.ToFloat64: they gather the registry and
// sum the matching series.
func (c collectorFor) Describe(chan<- *prometheus.Desc) {}

func (c collectorFor) Collect(ch chan<- prometheus.Metric) {
	mfs, err := c.m.metrics[c.proxy].Registry().Gather()
	if err != nil {
		return
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != c.metric {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range c.labels {
				if have[k] != v {
					continue metrics
				}
			}
			sum += mt.GetCounter().GetValue()
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("x", "x", nil, nil), prometheus.CounterValue, sum)
}
