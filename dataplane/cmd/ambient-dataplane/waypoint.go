package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/proxy"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

func newWaypointCommand() *cobra.Command {
	f := &proxyFlags{}
	var name, namespace, serviceAccount, listen, forWhat, scopeSA string
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Run a waypoint: the destination-side proxy of the services that use it",
		Long: `waypoint terminates HBONE for the services (and workloads) that use it, enforces their L4
authorization policies, picks an endpoint (round robin among healthy ones) and tunnels to it over HBONE
with the waypoint's own identity.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || namespace == "" {
				return errors.New("--waypoint and --namespace (or $POD_NAMESPACE) are required")
			}
			if serviceAccount == "" {
				serviceAccount = name
			}
			addr, err := netip.ParseAddrPort(listen)
			if err != nil {
				return fmt.Errorf("--listen-address %q: %w", listen, err)
			}
			switch forWhat {
			case "service", "workload", "all":
			default:
				return fmt.Errorf("--for %q: want service, workload or all", forWhat)
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			rt, err := newProxyRuntime(ctx, f, "waypoint", xdsclient.NodeInfo{Role: xdsclient.RoleWaypoint, Namespace: namespace, Waypoint: name})
			if err != nil {
				return err
			}
			self := addr.Addr()
			if self.IsUnspecified() {
				self = netip.Addr{}
			}
			p, err := proxy.New(proxy.Config{
				Mode: proxy.WaypointMode,
				Waypoint: proxy.WaypointConfig{
					Key: namespace + "/" + name, Identity: identity.New(f.trustDomain, namespace, serviceAccount), Listen: addr,
				},
				Store: rt.store, Certs: rt.certs, Network: proxy.LocalNetwork{Mark: f.mark, Self: self}, Ports: f.ports,
				Log: rt.log, Metrics: rt.metrics, AccessLog: rt.access, Ready: rt.ready, ConfigSynced: rt.synced,
				ConnectTimeout: f.connectTimeout,
			})
			if err != nil {
				return err
			}
			rt.log.Info("Waypoint scope", "for", forWhat, "serviceAccount", scopeSA)
			return rt.serve(ctx, p)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&name, "waypoint", "", "Name of the waypoint (its Service in --namespace).")
	cmd.Flags().StringVar(&namespace, "namespace", envOr("POD_NAMESPACE", ""), "Namespace of the waypoint.")
	cmd.Flags().StringVar(&serviceAccount, "service-account", envOr("SERVICE_ACCOUNT", ""), "Service account the waypoint runs as (its identity); default the waypoint's name.")
	cmd.Flags().StringVar(&listen, "listen-address", "[::]:15008", "HBONE listener address.")
	cmd.Flags().StringVar(&forWhat, "for", "service", "Traffic the waypoint handles: service, workload or all.")
	cmd.Flags().StringVar(&scopeSA, "scope-service-account", "", "Serve only the workloads of this service account.")
	return cmd
}
