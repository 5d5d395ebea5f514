package localcluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

// Addresses of the cluster network.
var (
	// BridgeAddr is the cluster namespace's address on the bridge the nodes hang from; the API server
	// listens there.
	BridgeAddr = netip.MustParseAddr("10.250.0.1")
	bridgeNet  = netip.MustParsePrefix("10.250.0.0/24")
)

// Options configure a local cluster.
type Options struct {
	// Name prefixes every network namespace and link, so that several clusters never collide.
	Name string
	// Nodes is the number of nodes.
	Nodes int
	// ManagerBin and DataplaneBin are the operator and data-plane binaries; AppBin runs demo
	// applications ("<AppBin> app echo ...").
	ManagerBin, DataplaneBin, AppBin string
	// WorkDir holds node directories, kubeconfigs and process logs.
	WorkDir string
	// Progress receives one line per step, for people.
	Progress io.Writer
}

// Cluster is a running local cluster.
type Cluster struct {
	opts   Options
	env    *envtest.Environment
	Config *rest.Config
	// Client is an admin client of the API server.
	Client client.Client
	cs     kubernetes.Interface
	// AdminKubeconfig is a kubeconfig file for the admin user.
	AdminKubeconfig string

	Nodes []*Node

	mu      sync.Mutex
	pods    map[string]*Pod // namespace/name
	podSeq  int
	stopped bool
	cancel  context.CancelFunc
	bg      sync.WaitGroup
	procs   []*Process
	// services is the last set of service rules written into the nodes (kube-proxy's job).
	serviceRules string
}

func (c *Cluster) progress(format string, args ...any) {
	if c.opts.Progress != nil {
		_, _ = fmt.Fprintf(c.opts.Progress, format+"\n", args...)
	}
}

// Start builds the cluster network, starts the API server and the operator, and starts playing the
// kubelet and the built-in controllers. It must run inside a network namespace of its own (see
// RunInNamespace).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	c := &Cluster{opts: opts, pods: map[string]*Pod{}}
	if err := os.MkdirAll(opts.WorkDir, 0o750); err != nil {
		return nil, err
	}
	c.progress("Building the cluster network: bridge %s", bridgeNet)
	if err := c.network(); err != nil {
		return nil, err
	}
	c.progress("Starting the API server (kube-apiserver and etcd built from source)")
	if err := c.startAPIServer(); err != nil {
		return nil, err
	}
	for i := 1; i <= opts.Nodes; i++ {
		n, err := c.addNode(ctx, i)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.control(runCtx)
	}()
	c.progress("Starting the operator (%s) with the permissions of its ClusterRole", filepath.Base(opts.ManagerBin))
	if err := c.startOperator(ctx); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) network() error {
	steps := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "amb0", "type", "bridge"},
		{"addr", "add", BridgeAddr.String() + "/24", "dev", "amb0"},
		{"link", "set", "amb0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o600)
}

func (c *Cluster) startAPIServer() error {
	env, err := testenv.New()
	if err != nil {
		return err
	}
	logs := filepath.Join(c.opts.WorkDir, "logs")
	if err := os.MkdirAll(logs, 0o750); err != nil {
		return err
	}
	apiLog, err := os.Create(filepath.Join(logs, "kube-apiserver.log")) // #nosec G304 -- our work directory
	if err != nil {
		return err
	}
	etcdLog, err := os.Create(filepath.Join(logs, "etcd.log")) // #nosec G304 -- our work directory
	if err != nil {
		return err
	}
	env.ControlPlane.APIServer = &envtest.APIServer{Out: apiLog, Err: apiLog}
	env.ControlPlane.Etcd = &envtest.Etcd{Out: etcdLog, Err: etcdLog}
	env.ControlPlane.APIServer.Address = BridgeAddr.String()
	env.ControlPlane.APIServer.Port = "6443"
	env.ControlPlane.APIServer.Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	env.ControlPlane.APIServer.Configure().Set("advertise-address", BridgeAddr.String())
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start the API server: %w", err)
	}
	c.env, c.Config = env, cfg
	if c.Client, err = client.New(cfg, client.Options{Scheme: testenv.Scheme}); err != nil {
		return err
	}
	if c.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	c.AdminKubeconfig = filepath.Join(c.opts.WorkDir, "admin.kubeconfig")
	return writeKubeconfig(c.AdminKubeconfig, cfg, "")
}

// writeKubeconfig writes a kubeconfig for cfg, authenticated by token when set, else by cfg's client
// certificate.
func writeKubeconfig(path string, cfg *rest.Config, token string) error {
	user := map[string]any{}
	if token != "" {
		user["token"] = token
	} else {
		user["client-certificate-data"] = base64.StdEncoding.EncodeToString(cfg.CertData)
		user["client-key-data"] = base64.StdEncoding.EncodeToString(cfg.KeyData)
	}
	kc := map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "local",
		"clusters": []any{map[string]any{"name": "local", "cluster": map[string]any{
			"server": cfg.Host, "certificate-authority-data": base64.StdEncoding.EncodeToString(cfg.CAData)}}},
		"users":    []any{map[string]any{"name": "user", "user": user}},
		"contexts": []any{map[string]any{"name": "local", "context": map[string]any{"cluster": "local", "user": "user"}}},
	}
	data, err := yaml.Marshal(kc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as a service account, with a token
// bound to a pod when pod is set (as the kubelet projects it).
func (c *Cluster) serviceAccountKubeconfig(ctx context.Context, path, namespace, sa string, pod *corev1.Pod) error {
	token, err := c.token(ctx, namespace, sa, nil, pod, 24*time.Hour)
	if err != nil {
		return err
	}
	return writeKubeconfig(path, c.Config, token)
}

// token requests a service-account token (TokenRequest), for audiences (nil: the API server's), bound to
// a pod when pod is set.
func (c *Cluster) token(ctx context.Context, namespace, sa string, audiences []string, pod *corev1.Pod, ttl time.Duration) (string, error) {
	secs := int64(ttl.Seconds())
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, sa, err)
	}
	return tr.Status.Token, nil
}

// startOperator runs the operator binary as the service account of config/default, with exactly the
// permissions of config/rbac/role.yaml.
func (c *Cluster) startOperator(ctx context.Context) error {
	const ns, sa = "ambient-operator-system", "ambient-operator-controller-manager"
	role := &rbacv1.ClusterRole{}
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, role); err != nil {
		return fmt.Errorf("parse config/rbac/role.yaml: %w", err)
	}
	role.Name = "ambient-operator-manager-role"
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}},
		role,
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "ambient-operator-manager-rolebinding"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
		},
	}
	for _, o := range objs {
		if err := c.Client.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
	}
	kubeconfig := filepath.Join(c.opts.WorkDir, "operator.kubeconfig")
	if err := c.serviceAccountKubeconfig(ctx, kubeconfig, ns, sa, nil); err != nil {
		return err
	}
	p, err := c.startProcess(processSpec{
		name: "operator", bin: c.opts.ManagerBin,
		args: []string{"--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:18081", "--leader-elect=false",
			"--metrics-secure=false", "--dataplane-registry=local.test"},
		env: []string{"KUBECONFIG=" + kubeconfig},
	})
	if err != nil {
		return err
	}
	return waitHTTP(ctx, "http://127.0.0.1:18081/readyz", 30*time.Second, p)
}

// Stop stops every process, deletes the pods' and nodes' namespaces, and stops the API server.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
	}
	c.bg.Wait()
	c.mu.Lock()
	pods := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		pods = append(pods, p)
	}
	procs := c.procs
	c.mu.Unlock()
	for _, p := range pods {
		p.kill()
		p.teardownNetwork()
	}
	for _, p := range procs {
		p.Kill()
	}
	for _, n := range c.Nodes {
		_ = ip("netns", "del", n.Netns)
		_ = os.RemoveAll("/etc/netns/" + n.Netns)
	}
	var err error
	if c.env != nil {
		err = c.env.Stop()
	}
	return err
}

// RunInNamespace re-executes the current program inside a fresh network namespace (named name) with the
// same arguments and the environment variable marker set, and deletes the namespace afterwards. It returns
// (true, err) in the parent after the child ended, and (false, nil) in the child, which goes on.
func RunInNamespace(name, marker string) (bool, error) {
	if os.Getenv(marker) != "" {
		return false, nil
	}
	_ = ip("netns", "del", name)
	if err := ip("netns", "add", name); err != nil {
		return true, err
	}
	defer func() { _ = ip("netns", "del", name) }()
	self, err := os.Executable()
	if err != nil {
		return true, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), marker+"="+name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return true, fmt.Errorf("exit status %d", exit.ExitCode())
	}
	return true, err
}
