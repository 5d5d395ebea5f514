package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"go.uber.org/goleak"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/internal/kubetest"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

const (
	testTD       = "td.local"
	testMeshNS   = "ambient-system"
	nodeToken    = "node-token"
	serverSAName = "ambient-xds"
)

var (
	testEnv    *kubetest.Env
	testEnvErr error
)

func TestMain(m *testing.M) {
	testEnv, testEnvErr = kubetest.Start()
	code := m.Run()
	if testEnv != nil {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(
			// klog's flush daemon and client-go's and gRPC's process-wide background goroutines belong to
			// the libraries, not to this package's code.
			goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
			goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"),
			goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*delayingType[...]).waitingLoop"),
			goleak.IgnoreAnyFunction("k8s.io/apimachinery/pkg/util/wait.BackoffUntil"),
			goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// kubeEnv returns the shared API server or fails the test.
func kubeEnv(t *testing.T) *kubetest.Env {
	t.Helper()
	if testEnv == nil {
		t.Fatalf("envtest is not running: %v", testEnvErr)
	}
	return testEnv
}

// pki is a test root and the xDS server's certificate.
type pki struct {
	rootPEM  []byte
	rootFile string
	server   tls.Certificate
}

func newPKI(t testing.TB, serverID identity.Identity) *pki {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs: []*url.URL{serverID.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})}
	p.server = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	p.rootFile = filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(p.rootFile, p.rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeAuth maps tokens to callers.
type fakeAuth map[string]Caller

func (f fakeAuth) Authenticate(_ context.Context, token string) (Caller, error) {
	c, ok := f[token]
	if !ok {
		return Caller{}, status.Error(codes.Unauthenticated, "unknown token")
	}
	return c, nil
}

func testAuth() fakeAuth {
	return fakeAuth{
		nodeToken:    {Namespace: testMeshNS, ServiceAccount: DefaultNodeServiceAccount},
		"wp-token":   {Namespace: "app", ServiceAccount: "wp"},
		"wp2-token":  {Namespace: "app", ServiceAccount: "wp2"},
		"sleep":      {Namespace: "app", ServiceAccount: "sleep"},
		"node1-only": {Namespace: testMeshNS, ServiceAccount: DefaultNodeServiceAccount, NodeName: "node1"},
	}
}

// grpcHarness serves a Server over TLS on loopback.
type grpcHarness struct {
	t      testing.TB
	srv    *Server
	grpc   *grpc.Server
	addr   string
	pki    *pki
	done   chan struct{}
	closed bool
}

func serverID() identity.Identity { return identity.New(testTD, testMeshNS, serverSAName) }

func newServerForTest(t testing.TB, log logr.Logger) *Server {
	t.Helper()
	s, err := NewServer(ServerOptions{Authenticator: testAuth(), MeshNamespace: testMeshNS, Logger: log, PreEncoded: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts a gRPC server for srv on addr ("127.0.0.1:0" for any port).
func serve(t testing.TB, srv *Server, p *pki, addr string) *grpcHarness {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // a restarted server rebinds the port it had
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.server}}))}
	if srv.opts.PreEncoded {
		opts = append(opts, grpc.ForceServerCodecV2(Codec()))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	h := &grpcHarness{t: t, srv: srv, grpc: g, addr: ln.Addr().String(), pki: p, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		_ = g.Serve(ln)
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *grpcHarness) stop() {
	if h.closed {
		return
	}
	h.closed = true
	h.srv.Close()
	h.grpc.Stop()
	<-h.done
}

// startClient runs a real Client against the harness; it stops when the test ends.
func startClient(t testing.TB, h *grpcHarness, node NodeInfo, token string, log logr.Logger) (*xdsclient.Client, *state.Store) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := state.NewStore(testTD)
	c, err := xdsclient.NewClient(xdsclient.ClientOptions{
		Address: h.addr, Identity: serverID().String(), RootCertFile: h.pki.rootFile, TokenFile: tokenFile,
		Node: node, Store: st, Logger: log, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c, st
}

// rawSub is a bare delta ADS stream that records what it receives, for protocol-level checks.
type rawSub struct {
	t      testing.TB
	conn   *grpc.ClientConn
	stream grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	responses []*discoveryv3.DeltaDiscoveryResponse
	have      [numTypes]map[string]string // name -> version
	err       error
	autoAck   bool
	nack      func(*discoveryv3.DeltaDiscoveryResponse) string
	received  chan struct{}
}

type rawOpts struct {
	initial [numTypes]map[string]string
	noRead  bool // never read: a subscriber that stalls
	nack    func(*discoveryv3.DeltaDiscoveryResponse) string
}

func dialRaw(t testing.TB, h *grpcHarness, node NodeInfo, token string, o rawOpts) *rawSub {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.pki.rootPEM)
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, InsecureSkipVerify: true}) // #nosec G402 -- test
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &rawSub{t: t, conn: conn, stream: stream, cancel: cancel, done: make(chan struct{}), autoAck: true, nack: o.nack, received: make(chan struct{}, 1)}
	for i := range s.have {
		s.have[i] = map[string]string{}
	}
	for typ := range numTypes {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURLs[typ], InitialResourceVersions: o.initial[typ]}
		if typ == 0 {
			req.Node = &corev3.Node{Id: "test", Metadata: node.Metadata()}
		}
		if err := stream.Send(req); err != nil {
			break // the server ended the stream (e.g. refused it): Recv returns its status
		}
	}
	go func() {
		defer close(s.done)
		if o.noRead {
			<-ctx.Done()
			return
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			t, _ := typeIndex(resp.GetTypeUrl())
			s.mu.Lock()
			s.responses = append(s.responses, resp)
			for _, r := range resp.GetResources() {
				s.have[t][r.GetName()] = r.GetVersion()
			}
			for _, n := range resp.GetRemovedResources() {
				delete(s.have[t], n)
			}
			s.mu.Unlock()
			ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
			if s.nack != nil {
				if msg := s.nack(resp); msg != "" {
					ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
				}
			}
			if err := stream.Send(ack); err != nil && !errors.Is(err, context.Canceled) {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			select {
			case s.received <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *rawSub) close() {
	s.cancel()
	<-s.done
	_ = s.conn.Close()
}

// names returns the names the subscriber holds of a type.
func (s *rawSub) names(t int) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.have[t]))
	for k, v := range s.have[t] {
		out[k] = v
	}
	return out
}

func (s *rawSub) all() []*discoveryv3.DeltaDiscoveryResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*discoveryv3.DeltaDiscoveryResponse, len(s.responses))
	for i, r := range s.responses {
		out[i] = proto.Clone(r).(*discoveryv3.DeltaDiscoveryResponse)
	}
	return out
}

func (s *rawSub) error() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// syncedTypes counts the types whose initial state is complete.
func (s *rawSub) syncedTypes() int {
	n := 0
	for _, r := range s.all() {
		if r.GetSystemVersionInfo() == InitialSyncDone {
			n++
		}
	}
	return n
}

func testLogger(t *testing.T) logr.Logger {
	if testing.Verbose() {
		return testr.NewWithOptions(t, testr.Options{Verbosity: 1})
	}
	return logr.Discard()
}
