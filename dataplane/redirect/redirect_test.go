package redirect

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"go.uber.org/goleak"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/testpki"
	"github.com/ambient-dev/ambient-operator/dataplane/proxy"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// needRoot skips tests that create network namespaces when the machine cannot (CI runs as root).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// pods are two pod network namespaces joined by a veth pair: a (10.77.<n>.1) and b (10.77.<n>.2).
type pods struct {
	a, b     string // names under /var/run/netns
	aIP, bIP netip.Addr
}

func newPods(t *testing.T) pods {
	t.Helper()
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	p := pods{a: "amb-a-" + id, b: "amb-b-" + id,
		aIP: netip.AddrFrom4([4]byte{10, 77, suffix[0], 1}), bIP: netip.AddrFrom4([4]byte{10, 77, suffix[0], 2})}
	for _, ns := range []string{p.a, p.b} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", p.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", p.b)
	sh(t, "ip", "-n", p.a, "addr", "add", p.aIP.String()+"/24", "dev", "eth0")
	sh(t, "ip", "-n", p.b, "addr", "add", p.bIP.String()+"/24", "dev", "eth0")
	sh(t, "ip", "-n", p.a, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", p.b, "link", "set", "eth0", "up")
	return p
}

func nsPath(name string) string { return "/var/run/netns/" + name }

// inNS runs f inside a namespace: sockets made there stay there.
func inNS(t *testing.T, name string, f func() error) {
	t.Helper()
	if err := Do(nsPath(name), f); err != nil {
		t.Fatal(err)
	}
}

func echoIn(t *testing.T, ns, addr string) {
	t.Helper()
	var l net.Listener
	inNS(t, ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
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
				_, _ = io.WriteString(c, "echo:")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

func dialIn(t *testing.T, ns string, dst netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	inNS(t, ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
		return err
	})
	return c
}

func roundTrip(c net.Conn, msg string, want int) (string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, want)
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

type node struct {
	agent   *Agent
	proxy   *proxy.Proxy
	metrics *telemetry.Metrics
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

var rules = Rules{Outbound: 15001, InboundPlaintext: 15006, HBONE: 15008, Mark: proxy.Mark}

func startNode(t *testing.T, name string, store *state.Store, iss *testpki.Issuer) *node {
	t.Helper()
	n := &node{metrics: telemetry.NewMetrics()}
	n.agent = &Agent{Socket: filepath.Join(t.TempDir(), "cni.sock"), Rules: rules, Log: logr.Discard(), Store: store}
	p, err := proxy.New(proxy.Config{Mode: proxy.NodeMode, Node: name, Store: store, Certs: iss, Network: n.agent,
		Log: logr.Discard(), Metrics: n.metrics, AccessLog: telemetry.NewAccessLog(logr.Discard())})
	if err != nil {
		t.Fatal(err)
	}
	n.proxy = p
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.done.Add(2)
	go func() { defer n.done.Done(); _ = n.agent.Serve(ctx) }()
	go func() { defer n.done.Done(); _ = p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		n.done.Wait()
		_ = p.Close()
		n.agent.Close()
	})
	return n
}

func (n *node) opened(reporter string) float64 {
	mfs, _ := n.metrics.Registry().Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "istio_tcp_connections_opened_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reporter" && l.GetValue() == reporter {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func workloads(p pods, clientTunnel api.TunnelProtocol) state.Resources {
	return state.Resources{Workloads: []*api.Workload{
		{Name: "client", Namespace: "default", Addresses: [][]byte{p.aIP.AsSlice()}, Node: "node-a", ServiceAccount: "sleep", Tunnel: clientTunnel},
		{Name: "server", Namespace: "default", Addresses: [][]byte{p.bIP.AsSlice()}, Node: "node-b", ServiceAccount: "echo"},
	}}
}

func TestInPodCapture(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	store := state.NewStore("cluster.local")
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_HBONE))).To(Succeed())
	iss, err := testpki.New("cluster.local")
	g.Expect(err).NotTo(HaveOccurred())
	a := startNode(t, "node-a", store, iss)
	b := startNode(t, "node-b", store, iss)
	echoIn(t, p.b, "0.0.0.0:8080")

	// The CNI plugin reports both pods; the agents capture them.
	g.Expect(a.agent.Handle(PodEvent{Command: "ADD", Namespace: "default", Name: "client", Netns: nsPath(p.a), IPs: []string{p.aIP.String()}})).To(Succeed())
	g.Expect(b.agent.Handle(PodEvent{Command: "ADD", Namespace: "default", Name: "server", Netns: nsPath(p.b), IPs: []string{p.bIP.String()}})).To(Succeed())
	for _, ns := range []string{p.a, p.b} {
		g.Eventually(func() bool { ok, _ := Installed(nsPath(ns)); return ok }, 15*time.Second).Should(BeTrue(), ns)
	}

	// The pod's own connection is captured and tunneled: both node proxies see it. Until the proxies serve
	// the pods (listeners and certificates), captured connections are refused.
	dst := netip.AddrPortFrom(p.bIP, 8080)
	var c net.Conn
	g.Eventually(func() (string, error) {
		err := Do(nsPath(p.a), func() error {
			var err error
			c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
			return err
		})
		if err != nil {
			return "", err
		}
		got, err := roundTrip(c, "hi", len("echo:hi"))
		if err != nil {
			_ = c.Close()
		}
		return got, err
	}, 15*time.Second).Should(Equal("echo:hi"))
	defer func() { _ = c.Close() }()
	g.Eventually(func() float64 { return a.opened("source") }).Should(BeNumerically(">=", 1))
	g.Eventually(func() float64 { return b.opened("destination") }).Should(BeNumerically(">=", 1))

	// The client leaves the mesh: its rules go, its open connection goes on, new ones go direct (and arrive
	// at the server's proxy as plaintext).
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_NONE))).To(Succeed())
	g.Eventually(func() bool { ok, _ := Installed(nsPath(p.a)); return ok }, 15*time.Second).Should(BeFalse())
	g.Expect(roundTrip(c, "still", len("still"))).To(Equal("still"), "an established connection survives leaving the mesh")
	before := a.opened("source")
	c2 := dialIn(t, p.a, dst)
	defer func() { _ = c2.Close() }()
	g.Expect(roundTrip(c2, "direct", len("echo:direct"))).To(Equal("echo:direct"))
	g.Expect(a.opened("source")).To(Equal(before), "the node proxy no longer sees the client's connections")
	g.Eventually(func() string { d, _ := Dump(nsPath(p.b)); return d }).Should(ContainSubstring("REDIRECT --to-ports 15006"))

	// It joins again: new connections are captured again, the direct one goes on.
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_HBONE))).To(Succeed())
	g.Eventually(func() bool { ok, _ := Installed(nsPath(p.a)); return ok }, 15*time.Second).Should(BeTrue())
	g.Expect(roundTrip(c2, "kept", len("kept"))).To(Equal("kept"), "an established connection survives joining the mesh")
	c3 := dialIn(t, p.a, dst)
	defer func() { _ = c3.Close() }()
	g.Expect(roundTrip(c3, "again", len("echo:again"))).To(Equal("echo:again"))
	g.Eventually(func() float64 { return a.opened("source") }).Should(BeNumerically(">", before))
}

func TestCaptureAtPodStart(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	echoIn(t, p.b, "0.0.0.0:8080")
	dst := netip.AddrPortFrom(p.bIP, 8080)
	// What the xDS server sends for pods that are scheduled but have no address yet.
	store := state.NewStore("cluster.local")
	scheduled := func(clientTunnel api.TunnelProtocol) state.Resources {
		return state.Resources{Workloads: []*api.Workload{
			{Name: "client", Namespace: "default", Node: "node-a", ServiceAccount: "sleep", Tunnel: clientTunnel},
			{Name: "legacy", Namespace: "default", Node: "node-a", Tunnel: api.TunnelProtocol_NONE},
		}}
	}
	g.Expect(store.Replace(scheduled(api.TunnelProtocol_HBONE))).To(Succeed())
	agent := &Agent{Socket: filepath.Join(t.TempDir(), "cni.sock"), Rules: rules, Log: logr.Discard(), Store: store,
		EnrollWait: 300 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = agent.Serve(ctx) }()
	defer func() { cancel(); <-done; agent.Close() }()
	g.Eventually(func() error { _, err := os.Stat(agent.Socket); return err }).Should(Succeed())

	// A pod of the mesh is captured before the ADD returns. No proxy serves it yet: its connections are
	// refused instead of leaving the pod in plaintext.
	g.Expect(agent.Handle(PodEvent{Command: "ADD", Namespace: "default", Name: "client", Netns: nsPath(p.a), IPs: []string{p.aIP.String()}})).To(Succeed())
	ok, err := Installed(nsPath(p.a))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ok).To(BeTrue(), "captured when the ADD returns")
	g.Expect(agent.Pods()).To(HaveKeyWithValue("default/client", true))
	inNS(t, p.a, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
		if err == nil {
			_ = c.Close()
			return fmt.Errorf("a connection of a captured pod left before the proxy served it")
		}
		return nil
	})

	// A pod outside the mesh, and one the configuration does not know within EnrollWait, start uncaptured.
	for _, name := range []string{"legacy", "unknown"} {
		start := time.Now()
		g.Expect(agent.Handle(PodEvent{Command: "ADD", Namespace: "default", Name: name, Netns: nsPath(p.b)})).To(Succeed())
		ok, err := Installed(nsPath(p.b))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ok).To(BeFalse(), name)
		if name == "unknown" {
			g.Expect(time.Since(start)).To(BeNumerically(">=", agent.EnrollWait), "an unknown pod waits for the configuration")
		}
	}

	// The pod turns out not to be in the mesh before any proxy served it: the agent releases it.
	g.Expect(store.Replace(scheduled(api.TunnelProtocol_NONE))).To(Succeed())
	g.Eventually(func() bool { ok, _ := Installed(nsPath(p.a)); return ok }, 10*time.Second).Should(BeFalse())
	g.Eventually(agent.Pods).Should(HaveKeyWithValue("default/client", false))
	c := dialIn(t, p.a, dst)
	defer func() { _ = c.Close() }()
	g.Expect(roundTrip(c, "out", len("echo:out"))).To(Equal("echo:out"))
}

func TestSuccessorRemovesRulesOfPodsThatLeftTheMesh(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	// A predecessor captured both pods and drained, leaving their rules for its successor; meanwhile the
	// client left the mesh.
	for _, ns := range []string{p.a, p.b} {
		g.Expect(Install(nsPath(ns), rules)).To(Succeed())
	}
	store := state.NewStore("cluster.local")
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_NONE))).To(Succeed())
	// The runtime's namespace directory, holding only this test's pods.
	netnsDir := t.TempDir()
	for _, ns := range []string{p.a, p.b} {
		g.Expect(os.Symlink(nsPath(ns), filepath.Join(netnsDir, ns))).To(Succeed())
	}
	synced := make(chan struct{})
	agent := &Agent{Socket: filepath.Join(t.TempDir(), "cni.sock"), Rules: rules, Log: logr.Discard(), Store: store,
		NetnsDir: netnsDir, ProcRoot: t.TempDir(), Synced: synced}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = agent.Serve(ctx) }()
	defer func() { cancel(); <-done; agent.Close() }()

	installed := func(ns string) func() bool {
		return func() bool { ok, _ := Installed(nsPath(ns)); return ok }
	}
	g.Consistently(installed(p.a), 300*time.Millisecond).Should(BeTrue(), "nothing is removed before the configuration is complete")
	close(synced)
	g.Eventually(installed(p.a), 10*time.Second).Should(BeFalse(), "the client is not in the mesh: its rules go")
	g.Expect(installed(p.b)()).To(BeTrue(), "the server is in the mesh: the proxy serves it, its rules stay")
}

func TestAgentFindsPodsItWasNotToldAbout(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	// A process in the pod's namespace, as every pod has, makes it visible under /proc.
	sleeper := exec.Command("ip", "netns", "exec", p.a, "sleep", "60")
	g.Expect(sleeper.Start()).To(Succeed())
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })

	store := state.NewStore("cluster.local")
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_HBONE))).To(Succeed())
	agent := &Agent{Rules: rules, Log: logr.Discard(), Store: store, NetnsDir: t.TempDir()} // only /proc finds it
	defer agent.Close()
	g.Eventually(func() error {
		_, err := agent.podFor(store.Load().Workload("default/client"))
		return err
	}, 10*time.Second).Should(Succeed())
	l, err := agent.Listen(context.Background(), store.Load().Workload("default/client"), 15001)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	// The listener is inside the pod: the pod reaches it on its loopback.
	c := dialIn(t, p.a, netip.MustParseAddrPort("127.0.0.1:15001"))
	_ = c.Close()
}

func TestAgentFindsPodsInTheRuntimesNetnsDirectory(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	store := state.NewStore("cluster.local")
	g.Expect(store.Replace(workloads(p, api.TunnelProtocol_HBONE))).To(Succeed())
	agent := &Agent{Rules: rules, Log: logr.Discard(), Store: store, NetnsDir: "/var/run/netns", ProcRoot: t.TempDir()}
	defer agent.Close()
	pod, err := agent.podFor(store.Load().Workload("default/server"))
	g.Expect(err).NotTo(HaveOccurred())
	id, err := IDOf(nsPath(p.b))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pod.id).To(Equal(id))
}

func TestRulesAreIdempotentAndRemovable(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	for range 3 {
		g.Expect(Install(nsPath(p.a), rules)).To(Succeed())
	}
	dump, err := Dump(nsPath(p.a))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(strings.Count(dump, "-j AMBIENT_OUTPUT")).To(Equal(1))
	g.Expect(strings.Count(dump, "-j AMBIENT_PREROUTING")).To(Equal(1))
	g.Expect(dump).To(ContainSubstring("--mark 0x539/0xfff -j RETURN"))
	g.Expect(Remove(nsPath(p.a))).To(Succeed())
	g.Expect(Remove(nsPath(p.a))).To(Succeed(), "removing twice is fine")
	ok, err := Installed(nsPath(p.a))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ok).To(BeFalse())
	var migrate []byte
	inNS(t, p.a, func() error {
		var err error
		migrate, err = os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
		return err
	})
	g.Expect(strings.TrimSpace(string(migrate))).To(Equal("1"))
}

func TestCNIPluginTellsTheAgent(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	store := state.NewStore("cluster.local")
	agent := &Agent{Socket: filepath.Join(t.TempDir(), "cni.sock"), Rules: rules, Log: logr.Discard(), Store: store,
		EnrollWait: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = agent.Serve(ctx) }()
	defer func() { cancel(); <-done; agent.Close() }()
	g.Eventually(func() error { _, err := os.Stat(agent.Socket); return err }).Should(Succeed())

	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s","type":"ambient-cni","agentSocket":%q,
		"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"%s/24","interface":0}]}}`, agent.Socket, p.aIP)
	args := &skel.CmdArgs{ContainerID: "c1", Netns: nsPath(p.a), IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=client;K8S_POD_UID=u1", StdinData: []byte(conf)}
	out := captureStdout(t, func() { g.Expect(cmdAdd(args)).To(Succeed()) })
	res := map[string]any{}
	g.Expect(json.Unmarshal(out, &res)).To(Succeed(), string(out))
	g.Expect(res["ips"]).To(HaveLen(1), "the previous result is passed through")
	g.Expect(agent.Pods()).To(HaveKeyWithValue("default/client", false))
	g.Expect(cmdCheck(args)).To(Succeed())
	g.Expect(cmdDel(args)).To(Succeed())
	g.Expect(agent.Pods()).NotTo(HaveKey("default/client"))

	// Not chained: refused with a clear message. Agent down: the pod still starts.
	bare := &skel.CmdArgs{Netns: nsPath(p.a), Args: args.Args, StdinData: []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s","type":"ambient-cni","agentSocket":%q}`, agent.Socket))}
	g.Expect(cmdAdd(bare)).To(MatchError(ContainSubstring("chained plugin")))
	down := &skel.CmdArgs{Netns: nsPath(p.a), Args: args.Args, StdinData: []byte(strings.Replace(conf, agent.Socket, "/nonexistent/cni.sock", 1))}
	captureStdout(t, func() { g.Expect(cmdAdd(down)).To(Succeed()) })
	g.Expect(cmdAdd(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.0.0","name":"k8s","type":"ambient-cni"}`)})).To(MatchError(ContainSubstring("agentSocket")))

	// An agent that is reached but cannot capture the pod fails the ADD: the runtime retries the sandbox
	// rather than start a pod of the mesh uncaptured.
	refusing := filepath.Join(t.TempDir(), "refusing.sock")
	l, err := net.Listen("unix", refusing)
	g.Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "install redirection for default/client: iptables-restore: exit status 4", http.StatusInternalServerError)
	})}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(l) }()
	defer func() { _ = srv.Close(); <-served }()
	refused := &skel.CmdArgs{Netns: nsPath(p.a), Args: args.Args, StdinData: []byte(strings.Replace(conf, agent.Socket, refusing, 1))}
	g.Expect(cmdAdd(refused)).To(MatchError(And(ContainSubstring("default/client"), ContainSubstring("500"), ContainSubstring("iptables-restore"))))
	g.Expect(cmdDel(refused)).To(Succeed(), "a deletion never fails on the agent")
}

// TestSuccessorKeepsTheAgentSocket: during an upgrade the next node proxy's agent takes the socket path
// over while the old one still runs; the old one stopping must not take the path with it.
func TestSuccessorKeepsTheAgentSocket(t *testing.T) {
	needRoot(t)
	g := NewWithT(t)
	p := newPods(t)
	socket := filepath.Join(t.TempDir(), "cni.sock")
	start := func() (*Agent, func()) {
		agent := &Agent{Socket: socket, Rules: rules, Log: logr.Discard(), Store: state.NewStore("cluster.local"), EnrollWait: time.Millisecond}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = agent.Serve(ctx) }()
		return agent, func() { cancel(); <-done; agent.Close() }
	}
	add := PodEvent{Command: "ADD", Namespace: "default", Name: "client", Netns: nsPath(p.a)}
	old, stopOld := start()
	g.Eventually(func() error { return notify(socket, add) }).Should(Succeed())
	g.Expect(old.Pods()).To(HaveKey("default/client"))

	oldSocket, err := os.Stat(socket)
	g.Expect(err).NotTo(HaveOccurred())
	successor, stopSuccessor := start()
	defer stopSuccessor()
	// The successor has taken the path over once it names another file.
	g.Eventually(func() bool { cur, err := os.Stat(socket); return err == nil && !os.SameFile(cur, oldSocket) }).Should(BeTrue())
	g.Eventually(func() error { return notify(socket, add) }).Should(Succeed())
	g.Expect(successor.Pods()).To(HaveKey("default/client"), "the plugin reaches the successor")
	stopOld()
	_, err = os.Stat(socket)
	g.Expect(err).NotTo(HaveOccurred(), "the old agent left the successor's socket in place")
	add.Name = "server"
	g.Expect(notify(socket, add)).To(Succeed())
	g.Expect(successor.Pods()).To(HaveKey("default/server"))

	stopSuccessor()
	_, err = os.Stat(socket)
	g.Expect(os.IsNotExist(err)).To(BeTrue(), "the last agent removes its socket")
}

func captureStdout(t *testing.T, f func()) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&buf, r); close(done) }()
	f()
	os.Stdout = old
	_ = w.Close()
	<-done
	return buf.Bytes()
}

func TestInstaller(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		check func(g Gomega, dir string)
	}{
		{
			name:  "appends to the first conflist",
			files: map[string]string{"10-kindnet.conflist": `{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"ptp"},{"type":"portmap"}]}`, "20-other.conflist": `{"plugins":[]}`},
			check: func(g Gomega, dir string) {
				conf := readJSON(g, filepath.Join(dir, "10-kindnet.conflist"))
				plugins := conf["plugins"].([]any)
				g.Expect(plugins).To(HaveLen(3))
				g.Expect(plugins[2]).To(HaveKeyWithValue("type", PluginName))
				g.Expect(readJSON(g, filepath.Join(dir, "20-other.conflist"))["plugins"]).To(BeEmpty())
			},
		},
		{
			name:  "turns a single-plugin conf into a conflist",
			files: map[string]string{"10-bridge.conf": `{"cniVersion":"0.4.0","name":"bridge","type":"bridge"}`},
			check: func(g Gomega, dir string) {
				_, err := os.Stat(filepath.Join(dir, "10-bridge.conf"))
				g.Expect(os.IsNotExist(err)).To(BeTrue())
				conf := readJSON(g, filepath.Join(dir, "10-bridge.conflist"))
				g.Expect(conf["name"]).To(Equal("bridge"))
				g.Expect(conf["plugins"]).To(HaveLen(2))
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			confDir, binDir := t.TempDir(), t.TempDir()
			for name, content := range tc.files {
				g.Expect(os.WriteFile(filepath.Join(confDir, name), []byte(content), 0o600)).To(Succeed())
			}
			self, err := os.Executable()
			g.Expect(err).NotTo(HaveOccurred())
			in := Installer{BinDir: binDir, ConfDir: confDir, Binary: self, AgentSocket: "/run/ambient/cni.sock"}
			changed, err := in.Install()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(changed).To(BeTrue())
			changed, err = in.Install()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(changed).To(BeFalse(), "installing again changes nothing")
			info, err := os.Stat(filepath.Join(binDir, PluginName))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.Mode().Perm() & 0o111).NotTo(BeZero())
			tc.check(g, confDir)

			g.Expect(in.Uninstall()).To(Succeed())
			_, err = os.Stat(filepath.Join(binDir, PluginName))
			g.Expect(os.IsNotExist(err)).To(BeTrue())
			entries, _ := os.ReadDir(confDir)
			for _, e := range entries {
				data, _ := os.ReadFile(filepath.Join(confDir, e.Name()))
				g.Expect(string(data)).NotTo(ContainSubstring(PluginName))
			}
		})
	}
	t.Run("waits for the network plugin's configuration", func(t *testing.T) {
		_, err := Installer{BinDir: t.TempDir(), ConfDir: t.TempDir(), Binary: os.Args[0]}.Install()
		NewWithT(t).Expect(err).To(MatchError(ContainSubstring("no CNI network configuration")))
	})
}

func readJSON(g Gomega, path string) map[string]any {
	data, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred())
	m := map[string]any{}
	g.Expect(json.Unmarshal(data, &m)).To(Succeed())
	return m
}
