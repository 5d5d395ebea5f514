package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
)

// Defaults of ClientOptions.
const (
	DefaultInitialBackoff = 250 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	// DefaultMaxReceiveBytes bounds one response; the server splits the initial state well below it.
	DefaultMaxReceiveBytes = 64 << 20
)

// ClientMetrics receives the client's connection state and the outcome of every response;
// *telemetry.Metrics implements it.
type ClientMetrics interface {
	SetXDSConnected(connected bool)
	XDSUpdate(typ, result string)
}

// Results of a response, as telemetry.XDSResultAccepted and XDSResultRejected.
const (
	resultAccepted = "accepted"
	resultRejected = "rejected"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Address of the xDS server, host:port. Required.
	Address string
	// Identity is the SPIFFE identity the server must present, e.g.
	// spiffe://cluster.local/ns/ambient-system/sa/ambient-xds. Required.
	Identity string
	// RootCertFile holds the PEM roots that sign the server's certificate; read on every connect.
	// Required.
	RootCertFile string
	// TokenFile holds the service-account token sent as "authorization: Bearer"; read on every connect.
	// Required.
	TokenFile string
	// Node says who the client is (role node with its node name, or waypoint). Required.
	Node NodeInfo
	// Store receives the resources. Required.
	Store *state.Store
	// Logger logs one line per connection and every NACK.
	Logger logr.Logger
	// Metrics, if set, receives the connection state and the result of each response.
	Metrics ClientMetrics
	// InitialBackoff and MaxBackoff bound the jittered exponential backoff between connection attempts.
	InitialBackoff, MaxBackoff time.Duration
	// DialOptions are added to the client's own (tests use them to dial in-memory listeners).
	DialOptions []grpc.DialOption
}

// Client is the xDS client of a node proxy or waypoint: it keeps a delta ADS stream to the server,
// subscribed (wildcard) to Workloads, Services and Authorizations, and applies what it receives to a
// state.Store. While the server is unreachable the store keeps its last state; on reconnect the client
// sends the versions it holds, so only what changed is sent again.
type Client struct {
	opts     ClientOptions
	expected identity.Identity
	log      logr.Logger

	connected atomic.Bool
	synced    chan struct{}
	syncOnce  sync.Once

	// Owned by the Run goroutine.
	versions   [NumTypes]map[string]string
	syncedType [NumTypes]bool
}

// NewClient checks the options; Run connects.
func NewClient(opts ClientOptions) (*Client, error) {
	switch {
	case opts.Address == "":
		return nil, errors.New("xds client: Address is required")
	case opts.RootCertFile == "" || opts.TokenFile == "":
		return nil, errors.New("xds client: RootCertFile and TokenFile are required")
	case opts.Store == nil:
		return nil, errors.New("xds client: Store is required")
	}
	if _, err := ParseNode(&corev3.Node{Metadata: opts.Node.Metadata()}); err != nil {
		return nil, fmt.Errorf("xds client: Node: %w", err)
	}
	want, err := identity.Parse(opts.Identity)
	if err != nil {
		return nil, fmt.Errorf("xds client: Identity: %w", err)
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	c := &Client{opts: opts, expected: want, log: opts.Logger.WithName("xds-client"), synced: make(chan struct{})}
	for t := range NumTypes {
		c.versions[t] = map[string]string{}
	}
	return c, nil
}

// Synced is closed once the client has received the server's full state of every type (for readiness).
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Connected reports whether a stream is up and the server has answered on it.
func (c *Client) Connected() bool { return c.connected.Load() }

// Run keeps a stream to the server until ctx ends, reconnecting with jittered exponential backoff.
func (c *Client) Run(ctx context.Context) error {
	attempt := 0
	for {
		start := time.Now()
		healthy, err := c.stream(ctx)
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if healthy {
			attempt = 0
		}
		delay := backoff(c.opts.InitialBackoff, c.opts.MaxBackoff, attempt)
		attempt++
		c.log.Info("xDS stream ended; reconnecting", "address", c.opts.Address, "error", errString(err),
			"lasted", time.Since(start).Round(time.Millisecond).String(), "retryIn", delay.Round(time.Millisecond).String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// backoff is the delay before attempt n: exponential from initial, capped at max, with "equal jitter"
// (half fixed, half random) so that proxies that lost the server together do not return together.
func backoff(initial, maxDelay time.Duration, n int) time.Duration {
	d := initial
	for i := 0; i < n && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return d/2 + rand.N(d/2+1) // #nosec G404 -- jitter, not a secret
}

func (c *Client) setConnected(v bool) {
	if c.connected.Swap(v) != v && c.opts.Metrics != nil {
		c.opts.Metrics.SetXDSConnected(v)
	}
}

// tlsConfig reads the roots and verifies the server by its SPIFFE identity, not by host name.
func (c *Client) tlsConfig() (*tls.Config, error) {
	pemBytes, err := os.ReadFile(c.opts.RootCertFile)
	if err != nil {
		return nil, fmt.Errorf("read root certificates: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("no PEM certificate in %s", c.opts.RootCertFile)
	}
	want := c.expected
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Host names are not verified: VerifyConnection checks the chain against the mesh roots and the
		// SPIFFE identity of the server (on every handshake, resumed or not).
		InsecureSkipVerify: true, // #nosec G402 -- verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			id, err := identity.VerifyChain(raw, roots, "", x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != want {
				return fmt.Errorf("xDS server presented identity %s, want %s", id, want)
			}
			return nil
		},
	}, nil
}

// stream runs one stream; healthy reports whether the server answered on it.
func (c *Client) stream(ctx context.Context) (healthy bool, err error) {
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return false, err
	}
	raw, err := os.ReadFile(c.opts.TokenFile)
	if err != nil {
		return false, fmt.Errorf("read token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxReceiveBytes)),
		// No service config from DNS: gRPC's resolver would otherwise wait for a TXT lookup
		// (_grpc_config.<name>) before the first connect, seconds where DNS is slow or absent.
		grpc.WithDisableServiceConfig(),
	}, c.opts.DialOptions...)
	conn, err := grpc.NewClient(c.opts.Address, dial...)
	if err != nil {
		return false, err
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	node := &corev3.Node{Id: c.opts.Node.String(), Metadata: c.opts.Node.Metadata()}
	for t := range NumTypes {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeURLs[t], ResourceNamesSubscribe: []string{"*"}}
		if t == 0 {
			req.Node = node
		}
		if len(c.versions[t]) > 0 {
			req.InitialResourceVersions = c.versions[t]
		}
		if err := stream.Send(req); err != nil {
			return false, err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return healthy, err
		}
		if !healthy {
			healthy = true
			c.setConnected(true)
			c.log.Info("Connected to the xDS server", "address", c.opts.Address, "as", c.opts.Node.String())
		}
		if err := stream.Send(c.handle(resp)); err != nil {
			return healthy, err
		}
	}
}

// handle applies a response and returns its ACK or NACK. Invalid resources are refused and named in the
// NACK; the valid ones are applied.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
	t, ok := TypeIndex(resp.GetTypeUrl())
	if !ok {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "unknown type " + resp.GetTypeUrl()}
		return req
	}
	var d state.Delta
	var errs []error
	for _, r := range resp.GetResources() {
		if err := decodeInto(&d, t, r); err != nil {
			errs = append(errs, &state.ResourceError{Type: TypeNames[t], Key: r.GetName(), Err: err})
		}
	}
	removed := resp.GetRemovedResources()
	switch t {
	case TypeWorkload:
		d.RemoveWorkloads = removed
	case TypeService:
		d.RemoveServices = removed
	case TypeAuthorization:
		d.RemovePolicies = removed
	}
	if err := c.opts.Store.Apply(d); err != nil {
		errs = append(errs, flatten(err)...)
	}
	refused := map[string]bool{}
	for _, err := range errs {
		var re *state.ResourceError
		if errors.As(err, &re) {
			refused[re.Key] = true
		}
	}
	for _, r := range resp.GetResources() {
		if !refused[r.GetName()] {
			c.versions[t][r.GetName()] = r.GetVersion()
		}
	}
	for _, n := range removed {
		delete(c.versions[t], n)
	}
	result := resultAccepted
	if len(errs) > 0 {
		result = resultRejected
		msg := errors.Join(errs...).Error()
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
		c.log.Info("Rejecting part of an xDS response (NACK); the valid resources were applied", "type", TypeNames[t], "refused", len(refused), "error", msg)
	}
	if c.opts.Metrics != nil {
		c.opts.Metrics.XDSUpdate(TypeNames[t], result)
	}
	if resp.GetSystemVersionInfo() == InitialSyncDone && !c.syncedType[t] {
		c.syncedType[t] = true
		if c.syncedType[TypeWorkload] && c.syncedType[TypeService] && c.syncedType[TypeAuthorization] {
			c.syncOnce.Do(func() { close(c.synced) })
			c.log.Info("Received the full mesh state from the xDS server")
		}
	}
	return req
}

// decodeInto decodes one resource into the delta, checking that its name matches its content.
func decodeInto(d *state.Delta, t int, r *discoveryv3.Resource) error {
	anyRes := r.GetResource()
	if anyRes.GetTypeUrl() != TypeURLs[t] {
		return fmt.Errorf("resource type %q in a response of type %q", anyRes.GetTypeUrl(), TypeURLs[t])
	}
	check := func(m interface {
		proto.Message
		GetName() string
		GetNamespace() string
	}) error {
		if err := proto.Unmarshal(anyRes.GetValue(), m); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		if got := m.GetNamespace() + "/" + m.GetName(); got != r.GetName() {
			return fmt.Errorf("resource named %q holds %q", r.GetName(), got)
		}
		return nil
	}
	switch t {
	case TypeWorkload:
		w := &api.Workload{}
		if err := check(w); err != nil {
			return err
		}
		d.Upsert.Workloads = append(d.Upsert.Workloads, w)
	case TypeService:
		s := &api.Service{}
		if err := check(s); err != nil {
			return err
		}
		d.Upsert.Services = append(d.Upsert.Services, s)
	default:
		p := &api.Authorization{}
		if err := check(p); err != nil {
			return err
		}
		d.Upsert.Policies = append(d.Upsert.Policies, p)
	}
	return nil
}

// flatten lists the errors of an errors.Join.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
