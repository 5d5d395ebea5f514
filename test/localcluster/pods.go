package localcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Pod is a pod the cluster runs: a network namespace linked to its node, and a process per container.
type Pod struct {
	Namespace, Name, UID string
	Node                 *Node
	Netns                string
	IP                   netip.Addr
	// TemplateHash identifies the pod template of the controller that made the pod.
	TemplateHash string

	c        *Cluster
	mu       sync.Mutex
	procs    []*Process
	probes   []string // readiness URLs, one per container with a probe
	ready    bool
	deleting bool
	grace    time.Duration
	vethHost string
}

// Key is namespace/name.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Ready reports whether every container answered its readiness probe.
func (p *Pod) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

// Processes are the pod's containers.
func (p *Pod) Processes() []*Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Process(nil), p.procs...)
}

// RunPod schedules a pod on a node and starts it: it creates the Pod object, its network namespace and
// link, runs the node's CNI chain (the mesh's plugin included), and starts its containers with their
// volumes mapped to files.
func (c *Cluster) RunPod(ctx context.Context, pod *corev1.Pod, node *Node) (*Pod, error) {
	pod = pod.DeepCopy()
	pod.Spec.NodeName = node.Name
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = "default"
	}
	if err := c.ensureServiceAccount(ctx, pod.Namespace, pod.Spec.ServiceAccountName); err != nil {
		return nil, err
	}
	if err := c.Client.Create(ctx, pod); err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.mu.Lock()
	c.podSeq++
	seq := c.podSeq
	ipAddr := netip.AddrFrom4([4]byte{10, 244, node.PodCIDR.Addr().As4()[2], byte(node.nextIP)})
	node.nextIP++
	c.mu.Unlock()
	p := &Pod{
		Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Node: node,
		Netns: fmt.Sprintf("%s-p%d", c.opts.Name, seq), IP: ipAddr, TemplateHash: pod.Labels[templateHashLabel], c: c,
		vethHost: fmt.Sprintf("%sp%d", shortName(c.opts.Name), seq),
		grace:    30 * time.Second,
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		p.grace = time.Duration(*g) * time.Second
	}
	c.mu.Lock()
	c.pods[p.Key()] = p
	c.mu.Unlock()
	if err := p.setupNetwork(); err != nil {
		return p, err
	}
	if err := c.runCNIChain("ADD", node, p); err != nil {
		return p, err
	}
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}},
		HostIP: node.Addr.String(), StartTime: &metav1.Time{Time: time.Now()},
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse},
		},
	}
	if err := c.Client.Status().Update(ctx, pod); err != nil {
		return p, fmt.Errorf("pod %s status: %w", p.Key(), err)
	}
	if err := c.writeHosts(ctx, p.Netns); err != nil {
		return p, err
	}
	for _, ctr := range pod.Spec.Containers {
		if err := p.startContainer(ctx, pod, ctr); err != nil {
			return p, err
		}
	}
	return p, nil
}

func (c *Cluster) ensureServiceAccount(ctx context.Context, ns, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account %s/%s: %w", ns, name, err)
	}
	return nil
}

func (p *Pod) setupNetwork() error {
	n := p.Node
	steps := [][]string{
		{"netns", "add", p.Netns},
		{"-n", p.Netns, "link", "set", "lo", "up"},
		{"-n", n.Netns, "link", "add", p.vethHost, "type", "veth", "peer", "name", "eth0", "netns", p.Netns},
		{"-n", n.Netns, "addr", "add", n.Gateway.String() + "/32", "dev", p.vethHost},
		{"-n", n.Netns, "link", "set", p.vethHost, "up"},
		{"-n", n.Netns, "route", "add", p.IP.String() + "/32", "dev", p.vethHost},
		{"-n", p.Netns, "addr", "add", p.IP.String() + "/32", "dev", "eth0"},
		{"-n", p.Netns, "link", "set", "eth0", "up"},
		{"-n", p.Netns, "route", "add", n.Gateway.String(), "dev", "eth0", "scope", "link"},
		{"-n", p.Netns, "route", "add", "default", "via", n.Gateway.String(), "dev", "eth0"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("network of pod %s: %w", p.Key(), err)
		}
	}
	return nil
}

func (p *Pod) teardownNetwork() {
	_ = ip("netns", "del", p.Netns)
	_ = os.RemoveAll("/etc/netns/" + p.Netns)
}

// container environment: the downward API values of the fields the data plane uses.
func (p *Pod) fieldValue(pod *corev1.Pod, path string) string {
	switch path {
	case "spec.nodeName":
		return p.Node.Name
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "status.podIP":
		return p.IP.String()
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName
	}
	return ""
}

// startContainer maps the container's volumes to files, expands its arguments as the kubelet does, and
// starts it in the pod's namespace.
func (p *Pod) startContainer(ctx context.Context, pod *corev1.Pod, ctr corev1.Container) error {
	c := p.c
	env := map[string]string{}
	var envList []string
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = p.fieldValue(pod, e.ValueFrom.FieldRef.FieldPath)
		}
		env[e.Name] = v
		envList = append(envList, e.Name+"="+v)
	}
	mounts, err := p.volumes(ctx, pod, ctr)
	if err != nil {
		return err
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		// In-cluster API access: the pod's service account, as the kubelet would mount it.
		kc := filepath.Join(c.opts.WorkDir, "pods", p.Netns, "kubeconfig")
		if err := os.MkdirAll(filepath.Dir(kc), 0o750); err != nil {
			return err
		}
		if err := c.serviceAccountKubeconfig(ctx, kc, pod.Namespace, pod.Spec.ServiceAccountName, pod); err != nil {
			return err
		}
		envList = append(envList, "KUBECONFIG="+kc)
	}
	bin, err := c.binaryFor(ctr)
	if err != nil {
		return err
	}
	var cmdArgs []string // what follows the executable
	if len(ctr.Command) > 0 {
		cmdArgs = ctr.Command[1:]
	}
	args := make([]string, 0, len(cmdArgs)+len(ctr.Args))
	for _, a := range append(append([]string(nil), cmdArgs...), ctr.Args...) {
		args = append(args, mapPaths(expandVars(a, env), mounts))
	}
	proc, err := c.startProcess(processSpec{name: fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, ctr.Name), bin: bin, args: args, env: envList, netns: p.Netns})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.procs = append(p.procs, proc)
	if probe := ctr.ReadinessProbe; probe != nil && probe.HTTPGet != nil {
		p.probes = append(p.probes, fmt.Sprintf("http://%s:%d%s", p.IP, probe.HTTPGet.Port.IntValue(), probe.HTTPGet.Path))
	}
	p.mu.Unlock()
	return nil
}

// binaryFor maps a container to the binary that stands for its executable: the data-plane image's
// entrypoint is DataplaneBin, and a command in that image (/usr/local/bin/ambient-proxy) is the file of
// the same name beside DataplaneBin.
func (c *Cluster) binaryFor(ctr corev1.Container) (string, error) {
	switch {
	case strings.Contains(ctr.Image, "ambient-dataplane"):
		if len(ctr.Command) == 0 {
			return c.opts.DataplaneBin, nil
		}
		bin := filepath.Join(filepath.Dir(c.opts.DataplaneBin), path.Base(ctr.Command[0]))
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("container %s runs %s of image %s: %w", ctr.Name, ctr.Command[0], ctr.Image, err)
		}
		return bin, nil
	case strings.HasPrefix(ctr.Image, AppImage):
		return c.opts.AppBin, nil
	}
	return "", fmt.Errorf("no binary stands for image %q", ctr.Image)
}

// AppImage is the image of demo applications; their containers run AppBin with the container's args.
const AppImage = "local.test/app"

// volumes materializes the container's mounts and returns mount path -> directory.
func (p *Pod) volumes(ctx context.Context, pod *corev1.Pod, ctr corev1.Container) (map[string]string, error) {
	c := p.c
	out := map[string]string{}
	byName := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		byName[v.Name] = v
	}
	for _, m := range ctr.VolumeMounts {
		v, ok := byName[m.Name]
		if !ok {
			return nil, fmt.Errorf("pod %s: volume %s not found", p.Key(), m.Name)
		}
		dir := filepath.Join(c.opts.WorkDir, "pods", p.Netns, "volumes", m.Name)
		switch {
		case v.HostPath != nil:
			dir = p.Node.HostPath(v.HostPath.Path)
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, err
			}
		case v.ConfigMap != nil:
			cm := &corev1.ConfigMap{}
			if err := c.Client.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: v.ConfigMap.Name}, cm); err != nil {
				return nil, fmt.Errorf("pod %s: ConfigMap %s: %w", p.Key(), v.ConfigMap.Name, err)
			}
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, err
			}
			for k, val := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, k), []byte(val), 0o600); err != nil {
					return nil, err
				}
			}
		case v.Projected != nil:
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, err
			}
			for _, src := range v.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil {
					ttl := time.Hour
					if t.ExpirationSeconds != nil {
						ttl = time.Duration(*t.ExpirationSeconds) * time.Second
					}
					token, err := c.token(ctx, pod.Namespace, pod.Spec.ServiceAccountName, []string{t.Audience}, pod, ttl)
					if err != nil {
						return nil, err
					}
					if err := os.WriteFile(filepath.Join(dir, t.Path), []byte(token), 0o600); err != nil {
						return nil, err
					}
				}
			}
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("pod %s: volume %s: unsupported kind", p.Key(), m.Name)
		}
		out[m.MountPath] = dir
	}
	return out, nil
}

// expandVars replaces $(NAME) as the kubelet does.
func expandVars(s string, env map[string]string) string {
	for k, v := range env {
		s = strings.ReplaceAll(s, "$("+k+")", v)
	}
	return s
}

// mapPaths rewrites paths under mount points to the directories that stand for them (longest first).
func mapPaths(arg string, mounts map[string]string) string {
	keys := make([]string, 0, len(mounts))
	for k := range mounts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	for _, k := range keys {
		if i := strings.Index(arg, k); i >= 0 && (len(arg) == i+len(k) || arg[i+len(k)] == '/') {
			return arg[:i] + mounts[k] + arg[i+len(k):]
		}
	}
	return arg
}

// writeHosts writes the names of the cluster's services for a pod: `ip netns exec` mounts it over
// /etc/hosts. It stands for cluster DNS.
func (c *Cluster) writeHosts(ctx context.Context, netns string) error {
	svcs := &corev1.ServiceList{}
	if err := c.Client.List(ctx, svcs); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, s := range svcs.Items {
		if ip := s.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
			fmt.Fprintf(&b, "%s %s.%s.svc %s.%s.svc.cluster.local\n", ip, s.Name, s.Namespace, s.Name, s.Namespace)
		}
	}
	dir := "/etc/netns/" + netns
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "hosts"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644) // #nosec G302 -- read by every process of the pod
	if err != nil {
		return err
	}
	_, err = f.WriteString(b.String())
	return errorsJoin(err, f.Close())
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Delete stops a pod as the kubelet does: SIGTERM to every container, the grace period to finish, then
// the CNI chain's DEL, and the pod is gone.
func (p *Pod) Delete(ctx context.Context) {
	p.mu.Lock()
	if p.deleting {
		p.mu.Unlock()
		return
	}
	p.deleting, p.ready = true, false
	procs := append([]*Process(nil), p.procs...)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, proc := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); proc.Stop(p.grace) }()
	}
	wg.Wait()
	_ = p.c.runCNIChain("DEL", p.Node, p)
	p.teardownNetwork()
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	_ = p.c.Client.Delete(ctx, obj, client.GracePeriodSeconds(0))
	p.c.mu.Lock()
	delete(p.c.pods, p.Key())
	p.c.mu.Unlock()
}

func (p *Pod) kill() {
	for _, proc := range p.Processes() {
		proc.Kill()
	}
}

// probe runs the readiness probes and reports whether the pod is ready; a container that exited makes
// it unready.
func (p *Pod) probe(ctx context.Context) bool {
	p.mu.Lock()
	probes, procs, deleting := p.probes, p.procs, p.deleting
	p.mu.Unlock()
	if deleting {
		return false
	}
	for _, proc := range procs {
		if proc.Exited() {
			return false
		}
	}
	for _, u := range probes {
		if !httpOK(ctx, u) {
			return false
		}
	}
	return true
}

// Pod returns a running pod by namespace/name.
func (c *Cluster) Pod(key string) *Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pods[key]
}

// Pods returns the running pods, sorted by key.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// templateHashLabel marks pods with the hash of their controller's template.
const templateHashLabel = "localcluster.ambient.dev/template-hash"

func templateHash(t corev1.PodTemplateSpec) string {
	data, _ := json.Marshal(t)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}
