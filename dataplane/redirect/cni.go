package redirect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginName is the CNI type of the plugin: the ambient-dataplane binary installed under this name runs
// as the plugin.
const PluginName = "ambient-cni"

// PluginConfig is the plugin's entry in the CNI network configuration list.
type PluginConfig struct {
	types.NetConf
	// AgentSocket is the node agent's Unix socket.
	AgentSocket string `json:"agentSocket"`
	// LogFile receives the plugin's diagnostics (the runtime discards stderr on success).
	LogFile string `json:"logFile,omitempty"`
}

// RunPlugin runs the CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) with the runtime's environment and
// standard input. It is a chained plugin: it passes the previous result through unchanged and tells the
// node agent about the pod's network namespace; the agent captures a pod of the mesh before the ADD
// returns. When the agent is unreachable the pod still starts (the agent finds the pod when it comes
// back); when the agent answers that it could not capture a pod of the mesh, or the configuration is
// broken, the ADD fails and the runtime retries the pod's sandbox.
func RunPlugin() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"ambient-cni: tells the ambient mesh node agent about pod network namespaces")
}

func parseConfig(stdin []byte) (*PluginConfig, *current.Result, error) {
	conf := &PluginConfig{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, nil, fmt.Errorf("parse the network configuration: %w", err)
	}
	if conf.AgentSocket == "" {
		return nil, nil, errors.New("the ambient-cni configuration needs agentSocket")
	}
	if conf.RawPrevResult == nil {
		return conf, nil, nil
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, nil, fmt.Errorf("parse the previous result: %w", err)
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, fmt.Errorf("convert the previous result: %w", err)
	}
	return conf, res, nil
}

// podArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from CNI_ARGS.
func podArgs(args string) (namespace, name, uid string) {
	for _, kv := range strings.Split(args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		case "K8S_POD_UID":
			uid = v
		}
	}
	return
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, prev, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if prev == nil {
		return errors.New("ambient-cni is a chained plugin: it needs a previous plugin's result (add it after the network plugin in the conflist)")
	}
	ns, name, uid := podArgs(args.Args)
	if ns != "" && name != "" {
		ev := PodEvent{Command: "ADD", Namespace: ns, Name: name, UID: uid, ContainerID: args.ContainerID, Netns: args.Netns}
		for _, ip := range prev.IPs {
			ev.IPs = append(ev.IPs, ip.Address.IP.String())
		}
		if err := notify(conf.AgentSocket, ev); err != nil {
			var refused *agentError
			if errors.As(err, &refused) {
				logf(conf.LogFile, "pod %s/%s: %v", ns, name, err)
				return fmt.Errorf("ambient-cni: pod %s/%s: %w", ns, name, err)
			}
			logf(conf.LogFile, "pod %s/%s: node agent unreachable, it will find the pod when it starts: %v", ns, name, err)
		}
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, _, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ns, name, uid := podArgs(args.Args)
	if ns != "" && name != "" {
		if err := notify(conf.AgentSocket, PodEvent{Command: "DEL", Namespace: ns, Name: name, UID: uid, ContainerID: args.ContainerID}); err != nil {
			logf(conf.LogFile, "pod %s/%s: telling the node agent about the deletion: %v", ns, name, err)
		}
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	_, prev, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if prev == nil {
		return errors.New("ambient-cni CHECK needs the previous result")
	}
	return nil
}

// notify posts an event to the node agent.
func notify(socket string, ev PodEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := client.Post("http://agent/v1/pods", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &agentError{status: resp.Status, msg: string(bytes.TrimSpace(msg))}
	}
	return nil
}

// agentError is the node agent's refusal of an event: it was reached and could not do its part.
type agentError struct{ status, msg string }

func (e *agentError) Error() string { return "node agent answered " + e.status + ": " + e.msg }

func logf(path, format string, args ...any) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600) // #nosec G304 -- configured by the installer
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintf(f, time.Now().UTC().Format(time.RFC3339)+" "+format+"\n", args...)
}
