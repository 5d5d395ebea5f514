//go:build !proxyonly

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
	"github.com/ambient-dev/ambient-operator/dataplane/version"
	"github.com/ambient-dev/ambient-operator/dataplane/xds"
)

// xdsFlags are the flags of `ambient-dataplane xds` (the operator's controllers/render/mesh.go, xdsArgs).
type xdsFlags struct {
	namespace         string
	trustDomain       string
	caSecret          string
	workloadCertTTL   time.Duration
	tokenAudience     string
	grpcPort          int
	metricsPort       int
	readinessPort     int
	logLevel          string
	acceptIstioLabels bool
	namespaceSelector string
	podSelector       string
	kubeconfig        string
	shutdownTimeout   time.Duration
	// restConfig, when set (tests), is used instead of --kubeconfig.
	restConfig *rest.Config
}

func newXDSCommand() *cobra.Command {
	f := &xdsFlags{}
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Run the compact xDS server and the certificate authority of the mesh",
		Long: `xds watches Pods, Services, EndpointSlices, Namespaces, Waypoints, waypoint Gateways and Istio
AuthorizationPolicies, translates them into the mesh's compact resources and serves them to node proxies
and waypoints over delta ADS; on the same gRPC port it serves the certificate authority that signs
workload certificates.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runXDS(cmd.Context(), f) },
	}
	fs := cmd.Flags()
	fs.StringVar(&f.namespace, "namespace", "ambient-system", "The mesh namespace: where the xDS server, the node proxies and the CA Secret are, and whose AuthorizationPolicies apply mesh-wide.")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "Trust domain of the mesh.")
	fs.StringVar(&f.caSecret, "ca-secret", "ambient-ca-root", "Secret in --namespace with the CA's signing certificate and key (tls.crt, tls.key).")
	fs.DurationVar(&f.workloadCertTTL, "workload-cert-ttl", ca.DefaultWorkloadTTL, "Lifetime of workload certificates.")
	fs.StringVar(&f.tokenAudience, "token-audience", ca.DefaultTokenAudience, "Audience the service-account tokens of proxies must be bound to.")
	fs.IntVar(&f.grpcPort, "grpc-port", 15012, "Port of the gRPC server (xDS and CA, TLS).")
	fs.IntVar(&f.metricsPort, "metrics-port", 15020, "Port of the Prometheus /metrics endpoint; 0 disables it.")
	fs.IntVar(&f.readinessPort, "readiness-port", 15021, "Port of /healthz/ready and /healthz/live; 0 disables it.")
	fs.StringVar(&f.logLevel, "log-level", "info", "Log level: error, warn, info or debug.")
	fs.BoolVar(&f.acceptIstioLabels, "accept-istio-labels", true, "Also honour istio.io/dataplane-mode=ambient and istio.io/use-waypoint.")
	fs.StringVar(&f.namespaceSelector, "enrollment-namespace-selector", xds.DefaultEnrollmentSelector, "Label selector of enrolled namespaces (an empty selector selects every namespace).")
	fs.StringVar(&f.podSelector, "enrollment-pod-selector", xds.DefaultEnrollmentSelector, "Label selector of individually enrolled pods (an empty selector selects every pod).")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Kubeconfig file; default: the in-cluster configuration, else $KUBECONFIG.")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "How long in-flight CA requests may take after SIGTERM.")
	return cmd
}

// restConfig is --kubeconfig, else the in-cluster configuration, else $KUBECONFIG (or ~/.kube/config).
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if cfg, err := rest.InClusterConfig(); err == nil {
		return cfg, nil
	}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig()
}

// caAuthenticator adapts the CA's TokenReview authenticator (shared review cache) to the xDS server.
type caAuthenticator struct{ a *ca.Authenticator }

func (c caAuthenticator) Authenticate(ctx context.Context, token string) (xds.Caller, error) {
	caller, err := c.a.Authenticate(ctx, token)
	if err != nil {
		return xds.Caller{}, err
	}
	return xds.Caller{Namespace: caller.Identity.Namespace, ServiceAccount: caller.Identity.ServiceAccount, NodeName: caller.NodeName}, nil
}

func runXDS(ctx context.Context, f *xdsFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	logging, err := telemetry.NewLogging(os.Stderr, f.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := logging.Logger()
	nsSel, err := labels.Parse(f.namespaceSelector)
	if err != nil {
		return fmt.Errorf("--enrollment-namespace-selector %q: %w", f.namespaceSelector, err)
	}
	podSel, err := labels.Parse(f.podSelector)
	if err != nil {
		return fmt.Errorf("--enrollment-pod-selector %q: %w", f.podSelector, err)
	}
	cfg := f.restConfig
	if cfg == nil {
		cfg, err = restConfig(f.kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("kubernetes client configuration (--kubeconfig, in-cluster or $KUBECONFIG): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := xds.NewMetrics(reg)
	if err != nil {
		return err
	}
	caSrv, err := ca.NewServer(ca.ServerConfig{
		Client: client, Namespace: f.namespace, TrustDomain: f.trustDomain, CASecret: f.caSecret,
		WorkloadTTL: f.workloadCertTTL, TokenAudience: f.tokenAudience, Registerer: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	xdsSrv, err := xds.NewServer(xds.ServerOptions{
		Authenticator: caAuthenticator{caSrv.Authenticator()}, MeshNamespace: f.namespace,
		PreEncoded: true, Logger: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	translator, err := xds.NewTranslator(xds.TranslatorOptions{
		Client: client, Dynamic: dyn, MeshNamespace: f.namespace, NamespaceSelector: nsSel, PodSelector: podSel,
		AcceptIstioLabels: f.acceptIstioLabels, Sink: xdsSrv, Logger: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	grpcSrv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(caSrv.TLSConfig())),
		grpc.ForceServerCodecV2(xds.Codec()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	xdsSrv.Register(grpcSrv)
	caSrv.Register(grpcSrv)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("Starting the xDS server and CA", "version", version.Version, "namespace", f.namespace, "trustDomain", f.trustDomain,
		"grpcPort", f.grpcPort, "enrollmentNamespaceSelector", nsSel.String(), "enrollmentPodSelector", podSel.String(),
		"acceptIstioLabels", f.acceptIstioLabels)

	ready := telemetry.NewReadiness("informers", "ca-root")
	lc := net.ListenConfig{}
	grpcLn, err := lc.Listen(ctx, "tcp", net.JoinHostPort("", strconv.Itoa(f.grpcPort)))
	if err != nil {
		return fmt.Errorf("--grpc-port: %w", err)
	}

	// Background work: informers and translation, the CA's watches, HTTP endpoints, the gRPC server.
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	defer stopHTTP()
	var wg sync.WaitGroup
	fatal := make(chan error, 6)
	wg.Go(func() {
		if err := translator.Run(workCtx); err != nil && workCtx.Err() == nil {
			fatal <- fmt.Errorf("translator: %w", err)
		}
	})
	wg.Go(func() {
		if err := caSrv.Run(workCtx); err != nil && workCtx.Err() == nil {
			fatal <- fmt.Errorf("certificate authority: %w", err)
		}
	})
	wg.Go(func() { trackReadiness(workCtx, ready, translator, caSrv, log) })
	for _, ep := range []struct {
		flag    string
		port    int
		handler http.Handler
	}{
		{"--metrics-port", f.metricsPort, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})},
		{"--readiness-port", f.readinessPort, ready.Handler()},
	} {
		if ep.port == 0 {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort("", strconv.Itoa(ep.port)))
		if err != nil {
			_ = grpcLn.Close()
			stopWork()
			wg.Wait()
			return fmt.Errorf("%s: %w", ep.flag, err)
		}
		wg.Go(func() {
			if err := telemetry.Serve(httpCtx, telemetry.NewServer(ln.Addr().String(), ep.handler), ln); err != nil {
				fatal <- fmt.Errorf("%s: %w", ep.flag, err)
			}
		})
	}
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- grpcSrv.Serve(grpcLn) }()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("Received a termination signal; shutting down")
	case runErr = <-fatal:
		log.Error(runErr, "Shutting down")
	case runErr = <-grpcDone:
		log.Error(runErr, "The gRPC server stopped; shutting down")
	}
	// Not ready any more; end the xDS streams so that proxies move to another replica now, then let
	// in-flight CA requests finish.
	ready.Draining()
	xdsSrv.Close()
	stopped := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(f.shutdownTimeout):
		grpcSrv.Stop()
		<-stopped
	}
	stopWork()
	stopHTTP()
	wg.Wait()
	log.Info("Stopped")
	if errors.Is(runErr, grpc.ErrServerStopped) {
		runErr = nil
	}
	return runErr
}

// trackReadiness keeps /healthz/ready in step with the informers (synced and the state built) and the CA
// (its Secret loaded).
func trackReadiness(ctx context.Context, ready *telemetry.Readiness, t *xds.Translator, c *ca.Server, log logr.Logger) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var was [2]bool
	for {
		for i, item := range []struct {
			name string
			ok   bool
		}{{"informers", t.Ready()}, {"ca-root", c.Ready()}} {
			if item.ok == was[i] {
				continue
			}
			was[i] = item.ok
			if item.ok {
				ready.Done(item.name)
			} else {
				ready.Pending(item.name)
			}
			log.Info("Readiness changed", "item", item.name, "ready", item.ok)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
