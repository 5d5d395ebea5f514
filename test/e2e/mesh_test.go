package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
	"github.com/ambient-dev/ambient-operator/test/localcluster"
)

// drainSeconds is the node proxies' drain window in the suite (the sample says 30).
const drainSeconds = 5

// setUpMesh applies the sample AmbientMesh (with a short drain), enrolls a namespace and deploys the
// suite's applications: sleep (client) on node-1; echo (2 replicas) and reviews (through the waypoint) on
// node-2; legacy outside the mesh.
func setUpMesh() {
	mesh := &ambientv1alpha1.AmbientMesh{}
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "samples", "ambient_v1alpha1_ambientmesh.yaml"))
	Expect(err).NotTo(HaveOccurred())
	Expect(yaml.Unmarshal(data, mesh)).To(Succeed())
	mesh.Spec.NodeProxy.DrainSeconds = drainSeconds
	Expect(cluster.Client.Create(ctx, mesh)).To(Succeed())
	waitMeshReady("0.1.0")

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{ambientv1alpha1.DataplaneLabel: ambientv1alpha1.DataplaneEnabled}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}},
	} {
		Expect(cluster.Client.Create(ctx, ns)).To(Succeed())
	}
	for _, o := range []client.Object{
		localcluster.AppDeployment("demo", "sleep", "sleep", 1, "node-1", nil),
		localcluster.AppDeployment("demo", "echo", "echo", 2, "node-2", nil),
		localcluster.AppService("demo", "echo", nil),
		localcluster.AppDeployment("demo", "reviews", "echo", 1, "node-2", nil),
		localcluster.AppService("demo", "reviews", map[string]string{ambientv1alpha1.UseWaypointLabel: "waypoint"}),
		localcluster.AppDeployment("legacy", "legacy", "echo", 1, "node-2", nil),
		localcluster.AppService("legacy", "legacy", nil),
		&ambientv1alpha1.Waypoint{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint"}},
	} {
		Expect(cluster.Client.Create(ctx, o)).To(Succeed())
	}
	for _, app := range []string{"demo/sleep", "demo/echo", "demo/reviews", "demo/waypoint", "legacy/legacy"} {
		ns, name, _ := strings.Cut(app, "/")
		eventually(func() bool {
			pods := cluster.PodsOf(ns, name)
			return len(pods) > 0 && pods[0].Ready()
		}).Should(BeTrue(), "%s ready", app)
	}
	// The mesh has seen every pod once echo answers through it.
	eventually(func() (string, error) { return send(svc("demo", "echo"), "warm-up") }).Should(ContainSubstring("warm-up"))
}

func waitMeshReady(version string) {
	GinkgoHelper()
	eventually(func(g Gomega) {
		m := &ambientv1alpha1.AmbientMesh{}
		g.Expect(cluster.Client.Get(ctx, client.ObjectKey{Name: "default"}, m)).To(Succeed())
		g.Expect(m.Status.Version).To(Equal(version))
		g.Expect(m.Status.Conditions).To(ContainElement(And(HaveField("Type", "Ready"), HaveField("Status", metav1.ConditionTrue))))
	}).WithTimeout(3 * time.Minute).Should(Succeed())
}

func sleepPod() string { return cluster.PodsOf("demo", "sleep")[0].Key() }

func svc(ns, name string) netip.AddrPort {
	GinkgoHelper()
	s := &corev1.Service{}
	Expect(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s)).To(Succeed())
	return netip.AddrPortFrom(netip.MustParseAddr(s.Spec.ClusterIP), 80)
}

// send exchanges a message with a destination from the sleep pod.
func send(dst netip.AddrPort, msg string) (string, error) {
	return cluster.Exchange(sleepPod(), dst, msg)
}

// metrics scrapes the node proxy of a node, or a waypoint pod.
func metrics(pod *localcluster.Pod) string {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://%s:15020/metrics", pod.IP))
	if err != nil {
		return ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func nodeProxy(node string) *localcluster.Pod {
	for _, p := range cluster.PodsOf("ambient-system", "ambient-node") {
		if p.Node.Name == node && p.Ready() {
			return p
		}
	}
	return nil
}

// haveSeries matches Prometheus text with a non-zero sample of metric carrying all label pairs.
func haveSeries(metric string, pairs ...string) OmegaMatcher {
	return WithTransform(func(text string) bool {
		for _, line := range strings.Split(text, "\n") {
			if !strings.HasPrefix(line, metric+"{") || strings.HasSuffix(line, " 0") {
				continue
			}
			all := true
			for _, p := range pairs {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true
			}
		}
		return false
	}, BeTrue())
}

var _ = Describe("The mesh", Ordered, func() {
	It("carries TCP across nodes over HBONE with the workloads' identities in the metrics", func() {
		Expect(send(svc("demo", "echo"), "hello")).To(MatchRegexp(`^echo-[a-z0-9-]+: hello$`))
		eventually(func() string { return metrics(nodeProxy("node-2")) }).Should(haveSeries("istio_tcp_connections_opened_total",
			`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/demo/sa/sleep"`,
			`destination_principal="spiffe://cluster.local/ns/demo/sa/echo"`, `connection_security_policy="mutual_tls"`))
		Expect(metrics(nodeProxy("node-1"))).To(haveSeries("istio_tcp_connections_opened_total",
			`reporter="source"`, `source_principal="spiffe://cluster.local/ns/demo/sa/sleep"`, `destination_service_name="echo"`))
	})

	It("routes a service that uses the waypoint through it", func() {
		Expect(send(svc("demo", "reviews"), "via waypoint")).To(HaveSuffix(": via waypoint"))
		wp := cluster.PodsOf("demo", "waypoint")[0]
		eventually(func() string { return metrics(wp) }).Should(haveSeries("istio_tcp_connections_opened_total",
			`reporter="waypoint"`, `source_principal="spiffe://cluster.local/ns/demo/sa/sleep"`, `destination_service_name="reviews"`))
		Expect(metrics(nodeProxy("node-2"))).To(haveSeries("istio_tcp_connections_opened_total",
			`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/demo/sa/waypoint"`))
	})

	It("passes traffic to a destination outside the mesh through in plaintext", func() {
		Expect(send(svc("legacy", "legacy"), "plain")).To(HaveSuffix(": plain"))
	})

	It("denies by L4 policy, and a policy change closes an open connection", func() {
		conn, err := cluster.Dial(sleepPod(), svc("demo", "echo"), 5*time.Second)
		Expect(err).NotTo(HaveOccurred())
		defer func() { _ = conn.Close() }()
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		_, err = io.WriteString(conn, "x")
		Expect(err).NotTo(HaveOccurred())
		buf := make([]byte, 1)
		eventually(func() string { _, _ = conn.Read(buf); return string(buf) }).Should(Equal("x"))

		policy := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"namespace": "demo", "name": "deny-sleep"},
			"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "echo"}}, "action": "DENY",
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/demo/sa/sleep"}}}}}}},
		}}
		Expect(cluster.Client.Create(ctx, policy)).To(Succeed())
		// The open connection is closed by the destination's node proxy...
		_, err = io.ReadAll(conn)
		Expect(err).NotTo(HaveOccurred(), "the connection ends before the deadline")
		// ...and new ones are refused, while other destinations still answer.
		eventually(func() (string, error) { return send(svc("demo", "echo"), "denied?") }).Should(BeEmpty())
		Expect(send(svc("demo", "reviews"), "other")).To(HaveSuffix(": other"))

		Expect(cluster.Client.Delete(ctx, policy)).To(Succeed())
		eventually(func() (string, error) { return send(svc("demo", "echo"), "allowed") }).Should(HaveSuffix(": allowed"))
	})

	It("keeps traffic flowing while the xDS server restarts", func() {
		before := cluster.PodsOf("ambient-system", "ambient-xds")
		Expect(before).NotTo(BeEmpty())
		for _, p := range before {
			Expect(cluster.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}})).To(Succeed())
		}
		deadline := time.Now().Add(20 * time.Second)
		var sent, failed int
		for time.Now().Before(deadline) && sent < 400 {
			if got, err := send(svc("demo", "echo"), "during"); err != nil || !strings.HasSuffix(got, ": during") {
				failed++
			}
			sent++
			time.Sleep(50 * time.Millisecond)
		}
		Expect(failed).To(BeZero(), "%d of %d connections failed while the xDS server restarted", failed, sent)
		// The new xDS server serves: a scaled-up application is reachable once its pod is ready.
		eventually(func() int {
			n := 0
			for _, p := range cluster.PodsOf("ambient-system", "ambient-xds") {
				if p.Ready() {
					n++
				}
			}
			return n
		}).Should(BeNumerically(">=", 1))
	})

	It("follows pod churn: replaced pods get traffic, deleted ones none", func() {
		old := map[string]bool{}
		for _, p := range cluster.PodsOf("demo", "echo") {
			old[p.Name] = true
			Expect(cluster.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}})).To(Succeed())
		}
		eventually(func() bool {
			pods := cluster.PodsOf("demo", "echo")
			ready := 0
			for _, p := range pods {
				if !old[p.Name] && p.Ready() {
					ready++
				}
			}
			return ready == 2
		}).Should(BeTrue())
		eventually(func() (string, error) { return send(svc("demo", "echo"), "new") }).Should(HaveSuffix(": new"))
		for range 10 {
			got, err := send(svc("demo", "echo"), "n")
			Expect(err).NotTo(HaveOccurred())
			name, _, _ := strings.Cut(got, ":")
			Expect(old).NotTo(HaveKey(name), "a deleted pod answered")
		}
	})

	It("upgrades the node proxies under load: no failed new connection, no reset of a connection shorter than the drain", func() {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var short, shortFailed, long, longFailed atomic.Int64
		var firstErr atomic.Value
		dst := svc("demo", "echo")
		// Bounded load: 4 workers of short connections, 2 of connections held 2s (< the 5s drain), at most
		// 5 minutes and 20,000 connections.
		deadline := time.Now().Add(5 * time.Minute)
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer GinkgoRecover()
				defer wg.Done()
				for time.Now().Before(deadline) && short.Load()+long.Load() < 20000 {
					select {
					case <-stop:
						return
					default:
					}
					hold := w >= 4
					err := exchangeHeld(dst, hold)
					if hold {
						long.Add(1)
					} else {
						short.Add(1)
					}
					if err != nil {
						if hold {
							longFailed.Add(1)
						} else {
							shortFailed.Add(1)
						}
						firstErr.CompareAndSwap(nil, err.Error())
					}
				}
			}()
		}
		time.Sleep(2 * time.Second)
		m := &ambientv1alpha1.AmbientMesh{}
		Expect(cluster.Client.Get(ctx, client.ObjectKey{Name: "default"}, m)).To(Succeed())
		m.Spec.Version = "0.1.1"
		Expect(cluster.Client.Update(ctx, m)).To(Succeed())
		waitMeshReady("0.1.1")
		for _, n := range []string{"node-1", "node-2"} {
			Expect(nodeProxy(n)).NotTo(BeNil())
			Expect(nodeProxy(n).Processes()[0].Exited()).To(BeFalse())
		}
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		AddReportEntry("upgrade under load", fmt.Sprintf("%d short connections (%d failed), %d 2s connections (%d failed); first error: %v",
			short.Load(), shortFailed.Load(), long.Load(), longFailed.Load(), firstErr.Load()))
		Expect(short.Load()).To(BeNumerically(">", 50), "the load ran")
		Expect(shortFailed.Load()).To(BeZero(), "new connections failed during the upgrade")
		Expect(longFailed.Load()).To(BeZero(), "connections shorter than the drain window were reset")
	})
})

// exchangeHeld opens a connection from sleep, sends, reads the echo, optionally holds it open for 2s
// with a second exchange at the end, and closes it.
func exchangeHeld(dst netip.AddrPort, hold bool) error {
	conn, err := cluster.Dial(sleepPod(), dst, 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if err := roundTrip(conn, "a", true); err != nil {
		return err
	}
	if hold {
		time.Sleep(2 * time.Second)
		if err := roundTrip(conn, "b", false); err != nil {
			return fmt.Errorf("after holding: %w", err)
		}
	}
	return nil
}

func roundTrip(conn net.Conn, msg string, first bool) error {
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	want := msg
	if first {
		// "<pod>: " then the echo.
		var got []byte
		buf := make([]byte, 1)
		for !strings.HasSuffix(string(got), ": "+msg) {
			if _, err := conn.Read(buf); err != nil {
				return fmt.Errorf("read after %q: %w", got, err)
			}
			got = append(got, buf[0])
			if len(got) > 200 {
				return errors.New("unexpected answer")
			}
		}
		return nil
	}
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != want {
		return fmt.Errorf("got %q", buf)
	}
	return nil
}
