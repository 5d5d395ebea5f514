package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node is a node: a network namespace on the cluster bridge, with its own CNI directories and pod CIDR.
type Node struct {
	Name  string
	Netns string
	Addr  netip.Addr
	// PodCIDR is 10.244.<index>.0/24; Gateway (.1) is the node's side of every pod link.
	PodCIDR netip.Prefix
	Gateway netip.Addr
	Dir     string // the node's "host" files: opt/cni/bin, etc/cni/net.d, var/run/ambient
	nextIP  int
}

// HostPath maps a path on the node's host to the directory that stands for it. /var/run/netns is the
// machine's own, where the pods' namespaces are.
func (n *Node) HostPath(p string) string {
	if p == "/var/run/netns" || strings.HasPrefix(p, "/var/run/netns/") {
		return p
	}
	return filepath.Join(n.Dir, p)
}

func (c *Cluster) addNode(ctx context.Context, i int) (*Node, error) {
	n := &Node{
		Name:    fmt.Sprintf("node-%d", i),
		Netns:   fmt.Sprintf("%s-node-%d", c.opts.Name, i),
		Addr:    netip.AddrFrom4([4]byte{10, 250, 0, byte(10 + i)}),
		PodCIDR: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
		Gateway: netip.AddrFrom4([4]byte{10, 244, byte(i), 1}),
		Dir:     filepath.Join(c.opts.WorkDir, fmt.Sprintf("node-%d", i)),
		nextIP:  10,
	}
	c.progress("Adding %s: network namespace %s, address %s, pods %s", n.Name, n.Netns, n.Addr, n.PodCIDR)
	veth := fmt.Sprintf("%sn%d", shortName(c.opts.Name), i)
	steps := [][]string{
		{"netns", "add", n.Netns},
		{"-n", n.Netns, "link", "set", "lo", "up"},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
		{"link", "set", veth, "master", "amb0", "up"},
		{"-n", n.Netns, "addr", "add", n.Addr.String() + "/24", "dev", "eth0"},
		{"-n", n.Netns, "link", "set", "eth0", "up"},
		{"-n", n.Netns, "route", "add", "default", "via", BridgeAddr.String()},
		{"route", "add", n.PodCIDR.String(), "via", n.Addr.String()},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	if err := inNetns(n.Netns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o600)
	}); err != nil {
		return nil, err
	}
	// The node's CNI configuration: a network plugin ("localcluster", which this package plays) that the
	// node proxy's installer chains its plugin after.
	for _, d := range []string{"opt/cni/bin", "etc/cni/net.d", "var/run/ambient"} {
		if err := os.MkdirAll(n.HostPath("/"+d), 0o750); err != nil {
			return nil, err
		}
	}
	conf := map[string]any{"cniVersion": "1.0.0", "name": "localcluster", "plugins": []any{map[string]any{"type": "localcluster"}}}
	data, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(n.HostPath("/etc/cni/net.d/10-localcluster.conflist"), data, 0o600); err != nil {
		return nil, err
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}},
		Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String()},
	}
	if err := c.Client.Create(ctx, node); err != nil {
		return nil, fmt.Errorf("create node %s: %w", n.Name, err)
	}
	node.Status = corev1.NodeStatus{
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Addr.String()}, {Type: corev1.NodeHostName, Address: n.Name}},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}},
	}
	if err := c.Client.Status().Update(ctx, node); err != nil {
		return nil, fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return n, nil
}

// shortName keeps interface names within 15 characters.
func shortName(s string) string {
	if len(s) > 6 {
		return s[len(s)-6:]
	}
	return s
}

// runCNIChain plays the container runtime: it executes the plugins of the node's network configuration
// after its own network plugin (the pod link is set up already), passing the previous result along, as
// containerd does. The node proxy's installer has added its plugin there.
func (c *Cluster) runCNIChain(command string, n *Node, p *Pod) error {
	entries, err := os.ReadDir(n.HostPath("/etc/cni/net.d"))
	if err != nil {
		return err
	}
	var confFile string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".conflist") {
			confFile = n.HostPath("/etc/cni/net.d/" + e.Name())
			break
		}
	}
	if confFile == "" {
		return fmt.Errorf("node %s has no CNI network configuration", n.Name)
	}
	data, err := os.ReadFile(confFile)
	if err != nil {
		return err
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return fmt.Errorf("parse %s: %w", confFile, err)
	}
	prev := map[string]any{
		"cniVersion": list.CNIVersion,
		"interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/var/run/netns/" + p.Netns}},
		"ips":        []any{map[string]any{"address": p.IP.String() + "/32", "gateway": n.Gateway.String(), "interface": 0}},
	}
	for _, plugin := range list.Plugins {
		typ, _ := plugin["type"].(string)
		if typ == "localcluster" {
			continue // this package's own network plugin: the link exists
		}
		conf := map[string]any{}
		for k, v := range plugin {
			// Paths in a plugin's configuration are the host's: map them to the node's directory.
			if str, ok := v.(string); ok && strings.HasPrefix(str, "/") {
				v = n.HostPath(str)
			}
			conf[k] = v
		}
		conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
		if command == "ADD" {
			conf["prevResult"] = prev
		}
		stdin, _ := json.Marshal(conf)
		cmd := exec.Command(n.HostPath("/opt/cni/bin/" + typ)) // #nosec G204 -- the node's installed plugin
		cmd.Env = []string{
			"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + p.UID, "CNI_NETNS=/var/run/netns/" + p.Netns, "CNI_IFNAME=eth0",
			"CNI_PATH=" + n.HostPath("/opt/cni/bin"),
			fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", p.Namespace, p.Name, p.UID),
		}
		cmd.Stdin = strings.NewReader(string(stdin))
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			return fmt.Errorf("CNI %s of %s with %s: %w: %s %s", command, p.Key(), typ, err, out, stderr)
		}
		if command == "ADD" && len(out) > 0 {
			next := map[string]any{}
			if err := json.Unmarshal(out, &next); err != nil {
				return fmt.Errorf("CNI %s result: %w", typ, err)
			}
			prev = next
		}
	}
	return nil
}

// waitExit waits for a process to end within d, then kills it.
func waitExit(cmd *exec.Cmd, done <-chan struct{}, d time.Duration) {
	select {
	case <-done:
	case <-time.After(d):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}
