package main

import (
	"context"
	"fmt"

	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// startControlPlane subscribes the store to the xDS server and takes workload certificates from its CA
// (both at --xds-address). Readiness item "config" is done once the first full state arrived; the proxy
// itself reports "workloads" once it serves every local workload of that state. While the server is unreachable the proxy keeps serving with the state
// and certificates it has; the clients reconnect with backoff.
func (rt *proxyRuntime) startControlPlane(ctx context.Context, node xdsclient.NodeInfo) error {
	f := rt.flags
	serverID, err := identity.Parse(f.xdsIdentity)
	if err != nil {
		return fmt.Errorf("--xds-identity: %w", err)
	}
	certClient, err := caclient.NewClient(caclient.ClientConfig{
		Address: f.xdsAddress, ServerIdentity: serverID, RootCertFile: f.rootCert, TokenFile: f.token,
		TrustDomain: f.trustDomain, Logger: rt.log.WithName("ca-client"),
	})
	if err != nil {
		return fmt.Errorf("certificate client: %w", err)
	}
	client, err := xdsclient.NewClient(xdsclient.ClientOptions{
		Address: f.xdsAddress, Identity: f.xdsIdentity, RootCertFile: f.rootCert, TokenFile: f.token,
		Node: node, Store: rt.store, Logger: rt.log, Metrics: rt.metrics,
	})
	if err != nil {
		_ = certClient.Close()
		return fmt.Errorf("xds client: %w", err)
	}
	rt.certs = certClient
	rt.synced = client.Synced()
	go func() {
		if err := client.Run(ctx); err != nil && ctx.Err() == nil {
			rt.log.Error(err, "The xDS client stopped")
		}
	}()
	go func() {
		select {
		case <-client.Synced():
			rt.ready.Done("config")
			rt.log.Info("Received the initial configuration from the xDS server", "address", f.xdsAddress)
		case <-ctx.Done():
		}
	}()
	go func() {
		<-ctx.Done()
		_ = certClient.Close()
	}()
	return nil
}
