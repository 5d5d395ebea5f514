package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/ambient-dev/ambient-operator/dataplane/proxy"
	"github.com/ambient-dev/ambient-operator/dataplane/redirect"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

func newNodeCommand() *cobra.Command {
	f := &proxyFlags{}
	var nodeName, cniSocket, netnsDir string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run the node proxy (ztunnel role) for the workloads of this node",
		Long: `node runs the per-node proxy: it captures the traffic of the enrolled pods of its node, tunnels it
over HBONE (mutual TLS with each pod's own identity) to the destination's node proxy or waypoint, and
authorizes what arrives for its pods.

Without a control plane, --config, --cert-dir and --root-cert configure it, and each local workload's
listeners bind the workload's address in the proxy's own network namespace.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				return errors.New("--node-name (or $NODE_NAME) is required")
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			rt, err := newProxyRuntime(ctx, f, "node-proxy", xdsclient.NodeInfo{Role: xdsclient.RoleNode, NodeName: nodeName})
			if err != nil {
				return err
			}
			network, err := rt.nodeNetwork(ctx, cniSocket, netnsDir)
			if err != nil {
				return err
			}
			p, err := proxy.New(proxy.Config{
				Mode: proxy.NodeMode, Node: nodeName,
				Store: rt.store, Certs: rt.certs, Network: network, Ports: f.ports,
				Log: rt.log, Metrics: rt.metrics, AccessLog: rt.access, Ready: rt.ready, ConfigSynced: rt.synced,
				ConnectTimeout: f.connectTimeout,
			})
			if err != nil {
				return err
			}
			return rt.serve(ctx, p)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&nodeName, "node-name", envOr("NODE_NAME", ""), "Name of this node: the proxy serves the workloads scheduled on it.")
	cmd.Flags().StringVar(&cniSocket, "cni-socket", "", "Unix socket where the node agent hears from the CNI plugin (in-pod redirection). Empty: workloads live in this network namespace.")
	cmd.Flags().StringVar(&netnsDir, "netns-dir", "/var/run/netns", "Where the container runtime keeps pod network namespaces; scanned for pods the agent was not told about.")
	return cmd
}

// nodeNetwork chooses where local workloads' sockets live: with --cni-socket, in each pod's network
// namespace (the node agent learns them from the CNI plugin and installs the pod's capture rules);
// without, in the proxy's own namespace, bound to each workload's address.
func (rt *proxyRuntime) nodeNetwork(ctx context.Context, cniSocket, netnsDir string) (proxy.Network, error) {
	if cniSocket == "" {
		return proxy.LocalNetwork{Mark: rt.flags.mark}, nil
	}
	if rt.flags.mark == 0 {
		return nil, errors.New("--cni-socket needs --mark: the pods' rules skip the proxy's own traffic by its mark")
	}
	agent := &redirect.Agent{
		Socket: cniSocket,
		Rules: redirect.Rules{Outbound: rt.flags.ports.Outbound, InboundPlaintext: rt.flags.ports.InboundPlaintext,
			HBONE: rt.flags.ports.HBONE, Mark: uint32(rt.flags.mark)}, // #nosec G115 -- validated positive
		Log:      rt.log.WithName("agent"),
		Store:    rt.store,
		NetnsDir: netnsDir,
		Synced:   rt.synced,
	}
	if agent.Synced == nil { // a static configuration is complete once loaded
		done := make(chan struct{})
		close(done)
		agent.Synced = done
	}
	go func() {
		if err := agent.Serve(ctx); err != nil {
			rt.log.Error(err, "The node agent stopped")
		}
	}()
	rt.agent = agent
	return agent, nil
}
