package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/proxy"
	"github.com/ambient-dev/ambient-operator/dataplane/redirect"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
	"github.com/ambient-dev/ambient-operator/dataplane/version"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// proxyFlags are the flags node proxies and waypoints share.
type proxyFlags struct {
	// Control plane.
	xdsAddress  string
	xdsIdentity string
	rootCert    string
	token       string
	trustDomain string
	// Static configuration (no control plane).
	config  string
	certDir string

	logLevel        string
	drainSeconds    int
	connectTimeout  time.Duration
	mark            int
	adminAddress    string
	metricsAddress  string
	readinessAddres string
	ports           proxy.Ports
}

func (f *proxyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.xdsAddress, "xds-address", "", "Address of the xDS server and CA (host:port). Without it, --config and --cert-dir configure the proxy.")
	fs.StringVar(&f.xdsIdentity, "xds-identity", "", "SPIFFE identity the xDS server must present.")
	fs.StringVar(&f.rootCert, "root-cert", "", "PEM trust bundle: verifies peers, and the xDS server.")
	fs.StringVar(&f.token, "token", "", "Service-account token file presented to the xDS server and CA (re-read on every use).")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "Trust domain of the mesh.")
	fs.StringVar(&f.config, "config", "", "Static configuration file (docs/config-file.md), reloaded when it changes.")
	fs.StringVar(&f.certDir, "cert-dir", "", "Static certificates: <dir>/<namespace>/<service-account>/{cert-chain.pem,key.pem}, re-read when they change.")
	fs.StringVar(&f.logLevel, "log-level", "info", "Log level: error, warn, info or debug (changeable at run time through the admin endpoint).")
	fs.IntVar(&f.drainSeconds, "drain-seconds", 30, "How long open connections may finish after SIGTERM.")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 5*time.Second, "Bound on connecting upstream or opening a tunnel.")
	fs.IntVar(&f.mark, "mark", proxy.Mark, "SO_MARK of the proxy's own connections, which redirection skips; 0 disables it.")
	fs.StringVar(&f.adminAddress, "admin-address", telemetry.DefaultAdminAddr, "Admin endpoint (config_dump, logging, pprof, quitquitquit); keep it on localhost.")
	fs.StringVar(&f.metricsAddress, "metrics-address", telemetry.DefaultMetricsAddr, "Prometheus metrics endpoint.")
	fs.StringVar(&f.readinessAddres, "readiness-address", telemetry.DefaultReadinessAddr, "Readiness and liveness endpoint.")
	fs.Uint16Var(&f.ports.Outbound, "outbound-port", proxy.DefaultPorts.Outbound, "Port of captured outbound traffic.")
	fs.Uint16Var(&f.ports.InboundPlaintext, "inbound-plaintext-port", proxy.DefaultPorts.InboundPlaintext, "Port of captured inbound plaintext traffic.")
	fs.Uint16Var(&f.ports.HBONE, "hbone-port", proxy.DefaultPorts.HBONE, "Port of inbound HBONE.")
}

func (f *proxyFlags) validate() error {
	switch {
	case f.xdsAddress == "" && (f.config == "" || f.certDir == "" || f.rootCert == ""):
		return errors.New("either --xds-address (with --xds-identity, --root-cert, --token) or --config, --cert-dir and --root-cert are required")
	case f.xdsAddress != "" && (f.xdsIdentity == "" || f.rootCert == "" || f.token == ""):
		return errors.New("--xds-address needs --xds-identity, --root-cert and --token")
	case f.drainSeconds < 0:
		return errors.New("--drain-seconds must not be negative")
	}
	return nil
}

// runtime is what every proxy process sets up around the proxy itself.
type proxyRuntime struct {
	flags   *proxyFlags
	logging *telemetry.Logging
	log     logr.Logger
	metrics *telemetry.Metrics
	access  *telemetry.AccessLog
	ready   *telemetry.Readiness
	store   *state.Store
	certs   certs.Provider
	// synced is closed once the xDS client holds the full state; nil with a static configuration.
	synced <-chan struct{}
	// agent is the node agent in in-pod mode.
	agent *redirect.Agent
}

// newProxyRuntime sets up logging, metrics, readiness, the state store and the certificates: from the
// control plane at --xds-address (node says who subscribes), else from --config and --cert-dir.
func newProxyRuntime(ctx context.Context, f *proxyFlags, role string, node xdsclient.NodeInfo) (*proxyRuntime, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	logging, err := telemetry.NewLogging(os.Stderr, f.logLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	rt := &proxyRuntime{
		flags: f, logging: logging, log: logging.Logger().WithName(role),
		metrics: telemetry.NewMetrics(),
		ready:   telemetry.NewReadiness("config", proxy.ReadyWorkloads),
		store:   state.NewStore(f.trustDomain),
	}
	rt.access = telemetry.NewAccessLog(logging.Logger())
	rt.log.Info("Starting", "role", role, "version", version.Version)
	if f.xdsAddress != "" {
		if err := rt.startControlPlane(ctx, node); err != nil {
			return nil, err
		}
		return rt, nil
	}
	if err := state.WatchFile(ctx, f.config, rt.store, rt.log, nil); err != nil {
		return nil, err
	}
	rt.ready.Done("config")
	rt.certs = &certs.FileProvider{Dir: f.certDir, RootsFile: f.rootCert}
	if rt.certs.Roots() == nil {
		return nil, fmt.Errorf("--root-cert %s holds no usable PEM certificate", f.rootCert)
	}
	return rt, nil
}

// serve runs the proxy with its admin, metrics and readiness endpoints until SIGTERM, SIGINT or
// /quitquitquit, then drains for --drain-seconds.
func (rt *proxyRuntime) serve(ctx context.Context, p *proxy.Proxy) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	quit := make(chan struct{})
	var quitOnce sync.Once
	admin := telemetry.NewAdminHandler(telemetry.AdminOptions{
		ConfigDump: rt.configDump,
		Logging:    rt.logging,
		Shutdown:   func() { quitOnce.Do(func() { close(quit) }) },
	})
	serversCtx, stopServers := context.WithCancel(context.Background())
	defer stopServers()
	errs := make(chan error, 4)
	for _, srv := range []struct {
		flag, addr string
		handler    http.Handler
	}{
		{"--admin-address", rt.flags.adminAddress, admin},
		{"--metrics-address", rt.flags.metricsAddress, rt.metrics.Handler()},
		{"--readiness-address", rt.flags.readinessAddres, rt.ready.Handler()},
	} {
		if srv.addr == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(resolveLocalhost(srv.addr))
		if err != nil {
			return fmt.Errorf("%s %q: %w", srv.flag, srv.addr, err)
		}
		l, err := proxy.ListenReusePort(ctx, ap)
		if err != nil {
			return fmt.Errorf("%s: %w", srv.flag, err)
		}
		go func() { errs <- telemetry.Serve(serversCtx, telemetry.NewServer(srv.addr, srv.handler), l) }()
	}

	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(runCtx) }()
	select {
	case <-ctx.Done():
		rt.log.Info("Received a termination signal; draining", "drainSeconds", rt.flags.drainSeconds)
	case <-quit:
		rt.log.Info("Asked to quit through the admin endpoint; draining", "drainSeconds", rt.flags.drainSeconds)
	case err := <-errs:
		stopRun()
		if rerr := <-runDone; rerr != nil {
			rt.log.Error(rerr, "The proxy stopped with an error")
		}
		_ = p.Close()
		return fmt.Errorf("an endpoint stopped: %w", err)
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), time.Duration(rt.flags.drainSeconds)*time.Second)
	defer cancel()
	err := p.Drain(drainCtx)
	stopRun()
	if rerr := <-runDone; rerr != nil {
		rt.log.Error(rerr, "The proxy stopped with an error")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		rt.log.Info("Drain deadline reached; remaining connections were closed")
		err = nil
	}
	rt.log.Info("Stopped")
	return err
}

// configDump is the admin endpoint's view: the snapshot, and in in-pod mode the pods the agent knows.
func (rt *proxyRuntime) configDump() any {
	dump := map[string]any{"snapshot": rt.store.Load().Dump()}
	if rt.agent != nil {
		dump["pods"] = rt.agent.Pods()
	}
	return dump
}

func resolveLocalhost(addr string) string {
	const prefix = "localhost:"
	if len(addr) > len(prefix) && addr[:len(prefix)] == prefix {
		return "127.0.0.1:" + addr[len(prefix):]
	}
	if len(addr) > 0 && addr[0] == ':' {
		return "0.0.0.0" + addr
	}
	return addr
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func addProxyCommands(root *cobra.Command) {
	root.AddCommand(newNodeCommand(), newWaypointCommand())
}
