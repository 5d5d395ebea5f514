// Command ambient-demo runs the mesh on this machine (`make demo`): a local cluster with two nodes, the
// real operator, the AmbientMesh and a Waypoint, demo applications, and traffic between them across nodes,
// through the waypoint and against a policy. It is also the demo applications' binary ("app echo",
// "app sleep").
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
	"github.com/ambient-dev/ambient-operator/test/localcluster"
)

const inNamespace = "AMBIENT_DEMO_NETNS"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "app" {
		if err := localcluster.RunApp(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var (
		bin  = flag.String("bin", "bin", "Directory with manager, ambient-dataplane and ambient-demo.")
		work = flag.String("work", "", "Working directory for node files and logs (default: a temporary directory).")
		keep = flag.Bool("keep", false, "Keep the cluster running after the tour, until Ctrl-C.")
	)
	flag.Parse()
	if err := localcluster.CheckPrerequisites(); err != nil {
		fmt.Fprintln(os.Stderr, "make demo:", err)
		os.Exit(2)
	}
	parent, err := localcluster.RunInNamespace("ambient-demo", inNamespace)
	if parent {
		if err != nil {
			fmt.Fprintln(os.Stderr, "make demo:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *work, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "\nThe demo failed:", err)
		os.Exit(1)
	}
}

type demo struct {
	c   *localcluster.Cluster
	ctx context.Context
	out *bufio.Writer
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
	_ = d.out.Flush()
}

func (d *demo) step(title string) { d.say("\n==> %s", title) }

func run(binDir, work string, keep bool) error {
	binDir, _ = filepath.Abs(binDir)
	if work == "" {
		dir, err := os.MkdirTemp("", "ambient-demo-")
		if err != nil {
			return err
		}
		work = dir
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d := &demo{ctx: ctx, out: bufio.NewWriter(os.Stdout)}
	d.step("Starting a local cluster: 2 nodes as network namespaces, an API server, the operator")
	c, err := localcluster.Start(ctx, localcluster.Options{
		Name: "ambd", Nodes: 2, WorkDir: work, Progress: d.out,
		ManagerBin: filepath.Join(binDir, "manager"), DataplaneBin: filepath.Join(binDir, "ambient-dataplane"), AppBin: filepath.Join(binDir, "ambient-demo"),
	})
	if err != nil {
		return err
	}
	d.c = c
	defer func() {
		d.step("Tearing down: stopping processes, deleting namespaces")
		_ = c.Stop()
		d.say("Done. Logs of every process are in %s/logs.", work)
	}()
	d.say("Work directory: %s (admin kubeconfig: %s)", work, c.AdminKubeconfig)
	if err := d.tour(); err != nil {
		return err
	}
	if keep {
		d.say("\nThe cluster keeps running; press Ctrl-C to tear it down.")
		<-ctx.Done()
	}
	return nil
}

func (d *demo) tour() error {
	ctx, c := d.ctx, d.c
	d.step("Applying config/samples/ambient_v1alpha1_ambientmesh.yaml")
	if err := applyFile(ctx, c.Client, filepath.Join(testenv.RepoRoot(), "config", "samples", "ambient_v1alpha1_ambientmesh.yaml")); err != nil {
		return err
	}
	d.say("The operator creates the CA root, the xDS server and the node proxy DaemonSet; this cluster")
	d.say("plays the kubelet and runs them as real ambient-dataplane and ambient-proxy processes from the")
	d.say("pod specs the operator produced.")
	if err := d.waitFor("the mesh to be Ready", 3*time.Minute, func() (bool, error) {
		m := &ambientv1alpha1.AmbientMesh{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: "default"}, m); err != nil {
			return false, err
		}
		for _, cond := range m.Status.Conditions {
			if cond.Type == ambientv1alpha1.ConditionReady && cond.Status == metav1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return err
	}
	d.printStatus()

	d.step("Deploying applications in namespace demo (enrolled) and legacy (not enrolled)")
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{ambientv1alpha1.DataplaneLabel: ambientv1alpha1.DataplaneEnabled}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}},
	} {
		if err := c.Client.Create(ctx, ns); err != nil {
			return err
		}
	}
	objs := []client.Object{
		localcluster.AppDeployment("demo", "sleep", "sleep", 1, "node-1", nil),
		localcluster.AppDeployment("demo", "echo", "echo", 2, "node-2", nil),
		localcluster.AppService("demo", "echo", nil),
		localcluster.AppDeployment("demo", "reviews", "echo", 1, "node-2", nil),
		localcluster.AppService("demo", "reviews", map[string]string{ambientv1alpha1.UseWaypointLabel: "waypoint"}),
		localcluster.AppDeployment("legacy", "legacy", "echo", 1, "node-2", nil),
		localcluster.AppService("legacy", "legacy", nil),
		&ambientv1alpha1.Waypoint{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "waypoint"}, Spec: ambientv1alpha1.WaypointSpec{For: ambientv1alpha1.WaypointForService}},
	}
	for _, o := range objs {
		if err := c.Client.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	d.say("sleep (client) runs on node-1; echo (2 replicas) and reviews on node-2; reviews uses the")
	d.say("Waypoint \"waypoint\" (label ambient.dev/use-waypoint on its Service); legacy is outside the mesh.")
	if err := d.waitFor("the applications and the waypoint to be ready", 2*time.Minute, func() (bool, error) {
		for _, prefix := range []string{"demo/sleep", "demo/echo", "demo/reviews", "demo/waypoint", "legacy/legacy"} {
			ns, name, _ := strings.Cut(prefix, "/")
			pods := c.PodsOf(ns, name)
			if len(pods) == 0 || !pods[0].Ready() {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	sleep := c.PodsOf("demo", "sleep")[0].Key()

	d.step("Traffic: sleep (node-1) -> service echo (node-2), over HBONE with mutual TLS")
	echoIP, err := d.serviceIP("demo", "echo")
	if err != nil {
		return err
	}
	if err := d.eventually("a reply from echo", func() (string, error) {
		return c.Exchange(sleep, netip.AddrPortFrom(echoIP, 80), "hello from sleep")
	}, func(s string) bool { return strings.Contains(s, "hello from sleep") }); err != nil {
		return err
	}
	for i := range 4 {
		got, err := c.Exchange(sleep, netip.AddrPortFrom(echoIP, 80), fmt.Sprintf("request %d", i))
		if err != nil {
			return err
		}
		d.say("  sleep -> echo:80 answered %q", got)
	}
	d.say("The node proxy of node-1 captured the connection in the sleep pod, tunneled it with sleep's own")
	d.say("identity to node-2's proxy, which checked it and connected to an echo pod (round robin).")

	d.step("Traffic through the waypoint: sleep -> service reviews")
	reviewsIP, err := d.serviceIP("demo", "reviews")
	if err != nil {
		return err
	}
	if err := d.eventually("a reply from reviews through the waypoint", func() (string, error) {
		return c.Exchange(sleep, netip.AddrPortFrom(reviewsIP, 80), "via waypoint")
	}, func(s string) bool { return strings.Contains(s, "via waypoint") }); err != nil {
		return err
	}
	got, err := c.Exchange(sleep, netip.AddrPortFrom(reviewsIP, 80), "via waypoint")
	if err != nil {
		return err
	}
	d.say("  sleep -> reviews:80 answered %q", got)
	d.say("node-1's proxy tunneled to the waypoint (sleep's identity); the waypoint enforced the service's")
	d.say("policies, picked an endpoint and tunneled on to node-2 with the waypoint's own identity.")

	d.step("Passthrough: sleep -> legacy (not in the mesh), in plaintext")
	legacyIP, err := d.serviceIP("legacy", "legacy")
	if err != nil {
		return err
	}
	got, err = c.Exchange(sleep, netip.AddrPortFrom(legacyIP, 80), "plain")
	if err != nil {
		return err
	}
	d.say("  sleep -> legacy:80 answered %q", got)

	d.step("A policy: an Istio AuthorizationPolicy that denies sleep's identity on echo")
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"namespace": "demo", "name": "deny-sleep"},
		"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "echo"}}, "action": "DENY",
			"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/demo/sa/sleep"}}}}}}},
	}}
	if err := c.Client.Create(ctx, policy); err != nil {
		return err
	}
	if err := d.eventually("the connection to be denied", func() (string, error) {
		return c.Exchange(sleep, netip.AddrPortFrom(echoIP, 80), "denied?")
	}, func(s string) bool { return s == "" }); err != nil {
		return err
	}
	d.say("  sleep -> echo:80 now gets no answer: node-2's proxy answered the tunnel with 401.")
	got, err = c.Exchange(sleep, netip.AddrPortFrom(reviewsIP, 80), "still allowed")
	if err != nil {
		return err
	}
	d.say("  sleep -> reviews:80 still answers %q (the policy selects echo only).", got)
	if err := c.Client.Delete(ctx, policy); err != nil {
		return err
	}

	d.step("What the proxies report (Istio's TCP metrics, scraped from each node proxy)")
	for _, p := range c.PodsOf("ambient-system", "ambient-node") {
		metrics, err := scrape(fmt.Sprintf("http://%s:15020/metrics", p.IP))
		if err != nil {
			return err
		}
		d.say("  %s on %s:", p.Name, p.Node.Name)
		for _, line := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(line, "istio_tcp_connections_opened_total{") {
				d.say("    %s", summarizeMetric(line))
			}
		}
	}
	d.printStatus()
	d.say("\nThat was: a mesh installed by the operator, pods enrolled by a namespace label, traffic")
	d.say("tunneled between nodes with per-pod identities, a waypoint, passthrough, and an L4 policy.")
	return nil
}

func (d *demo) serviceIP(ns, name string) (netip.Addr, error) {
	svc := &corev1.Service{}
	if err := d.c.Client.Get(d.ctx, client.ObjectKey{Namespace: ns, Name: name}, svc); err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(svc.Spec.ClusterIP)
}

func (d *demo) waitFor(what string, timeout time.Duration, cond func() (bool, error)) error {
	d.say("   waiting for %s...", what)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ok, err := cond()
		if err == nil && ok {
			return nil
		}
		select {
		case <-d.ctx.Done():
			return d.ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out waiting for %s", what)
}

func (d *demo) eventually(what string, f func() (string, error), ok func(string) bool) error {
	var last string
	var lastErr error
	err := d.waitFor(what, time.Minute, func() (bool, error) {
		last, lastErr = f()
		return ok(last), nil
	})
	if err != nil {
		return fmt.Errorf("%w (last answer %q, error %v)", err, last, lastErr)
	}
	return nil
}

// printStatus prints what `kubectl get ambientmesh,waypoint` shows.
func (d *demo) printStatus() {
	d.say("\n$ kubectl get ambientmesh,waypoint -A")
	w := tabwriter.NewWriter(d.out, 2, 4, 3, ' ', 0)
	meshes := &ambientv1alpha1.AmbientMeshList{}
	if err := d.c.Client.List(d.ctx, meshes); err == nil {
		fmt.Fprintln(w, "NAME\tREADY\tVERSION\tNODES\tROLLOUT")
		for _, m := range meshes.Items {
			phase := ""
			if m.Status.Rollout != nil {
				phase = string(m.Status.Rollout.Phase)
			}
			fmt.Fprintf(w, "ambientmesh/%s\t%s\t%s\t%s\t%s\n", m.Name, condStatus(m.Status.Conditions, "Ready"), m.Status.Version, m.Status.Nodes, phase)
		}
	}
	wps := &ambientv1alpha1.WaypointList{}
	if err := d.c.Client.List(d.ctx, wps); err == nil && len(wps.Items) > 0 {
		fmt.Fprintln(w, "\nNAMESPACE\tNAME\tFOR\tREADY\tADDRESS")
		for _, wp := range wps.Items {
			addr := ""
			if len(wp.Status.Addresses) > 0 {
				addr = wp.Status.Addresses[0].Value
			}
			fmt.Fprintf(w, "%s\twaypoint/%s\t%s\t%s\t%s\n", wp.Namespace, wp.Name, wp.Spec.For, condStatus(wp.Status.Conditions, "Ready"), addr)
		}
	}
	_ = w.Flush()
}

func condStatus(conds []metav1.Condition, typ string) string {
	for _, c := range conds {
		if c.Type == typ {
			return string(c.Status)
		}
	}
	return "Unknown"
}

func applyFile(ctx context.Context, c client.Client, path string) error {
	data, err := os.ReadFile(path) // #nosec G304 -- a sample of this repository
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return err
	}
	return c.Create(ctx, obj)
}

func summarizeMetric(line string) string {
	keep := []string{"reporter", "source_workload", "source_principal", "destination_workload", "destination_service_name", "connection_security_policy"}
	body := line[strings.Index(line, "{")+1 : strings.LastIndex(line, "}")]
	value := strings.TrimSpace(line[strings.LastIndex(line, "}")+1:])
	var parts []string
	for _, kv := range strings.Split(body, ",") {
		k, _, _ := strings.Cut(kv, "=")
		for _, want := range keep {
			if k == want {
				parts = append(parts, kv)
			}
		}
	}
	return "opened=" + value + " " + strings.Join(parts, " ")
}
