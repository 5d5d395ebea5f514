package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	apiv1alpha1 "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/caclient"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Defaults of ServerConfig.
const (
	DefaultWorkloadTTL        = 24 * time.Hour
	DefaultTokenAudience      = "ambient-ca"
	DefaultNodeServiceAccount = "ambient-node"
	DefaultServiceAccount     = "ambient-xds"
)

const (
	// maxCSRBytes bounds a request's CSR; a P-256 CSR with one URI SAN is about 500 bytes of PEM.
	maxCSRBytes = 8 << 10
	// indexNodeAccount indexes pods by "<node>/<namespace>/<service account>".
	indexNodeAccount = "nodeServiceAccount"
)

// Reasons of the refused-certificates counter.
const (
	reasonUnauthenticated   = "unauthenticated"
	reasonNotServiceAccount = "not_service_account"
	reasonInvalidRequest    = "invalid_request"
	reasonForeignDomain     = "foreign_trust_domain"
	reasonUnboundToken      = "node_proxy_token_not_bound_to_pod"
	reasonNotOnNode         = "not_on_callers_node"
	reasonNotOwnIdentity    = "not_own_identity"
	reasonUnavailable       = "unavailable"
	reasonInternal          = "internal"
)

// ServerConfig configures the CA server.
type ServerConfig struct {
	// Client reads the CA Secret and pods and creates TokenReviews. Required.
	Client kubernetes.Interface
	// Namespace is the mesh namespace: where the CA Secret, the node proxies and the CA itself run. Required.
	Namespace string
	// TrustDomain of the mesh. Required.
	TrustDomain string
	// CASecret is the name of the kubernetes.io/tls Secret (tls.crt, tls.key, optional ca.crt) in
	// Namespace holding the signing certificate and key. Required.
	CASecret string
	// WorkloadTTL is the lifetime of issued certificates; requests may ask for less. Default 24h.
	WorkloadTTL time.Duration
	// TokenAudience is the audience callers' tokens must be bound to. Default "ambient-ca".
	TokenAudience string
	// NodeServiceAccount is the node proxies' service account in Namespace. Default "ambient-node".
	NodeServiceAccount string
	// ServiceAccount is the CA's own service account in Namespace, the identity of its serving
	// certificate. Default "ambient-xds".
	ServiceAccount string
	// ServiceName is the CA's Service in Namespace, for the DNS SANs of the serving certificate.
	// Default ServiceAccount.
	ServiceName string
	// ExtraSANs are more DNS names or IP addresses for the serving certificate.
	ExtraSANs []string
	// Registerer registers the CA's metrics; nil means they are not registered.
	Registerer prometheus.Registerer
	// Logger logs root changes and refusals; never tokens or keys.
	Logger logr.Logger
}

// Server is the mesh's certificate authority: a gRPC CertificateService that signs workload CSRs for
// authenticated and authorized callers with the root held in a Kubernetes Secret, and issues its own
// serving certificate. Create it with NewServer, start its watches with Run.
type Server struct {
	apiv1alpha1.UnimplementedCertificateServiceServer

	cfg     ServerConfig
	log     logr.Logger
	auth    *Authenticator
	pods    cache.SharedIndexInformer
	secrets cache.SharedIndexInformer
	synced  atomic.Bool
	root    atomic.Pointer[rootState]
	bundle  atomic.Pointer[trustBundlePEM]
	now     func() time.Time

	mu      sync.Mutex // guards retired, serving and root changes
	retired []retiredRoot
	serving *servingCert

	issued  prometheus.Counter
	refused *prometheus.CounterVec
	expiry  prometheus.Gauge
}

// rootState is a loaded CA Secret.
type rootState struct {
	signer *Signer
	// chain is every certificate of tls.crt, PEM, each appended after the leaf.
	chain []string
	// anchors are the trust anchors of this root: ca.crt if present, else the last certificate of tls.crt.
	anchors []*x509.Certificate
	// sum identifies the Secret's content, to ignore updates that do not change it.
	sum [sha256.Size]byte
}

// retiredRoot is the anchor of a rotated-out root, kept in the trust bundle while certificates it signed
// may still be in use.
type retiredRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// trustBundlePEM is the PEM trust bundle: the current anchors plus the retired roots still needed,
// rebuilt at refreshAt, when the first of those retired roots is no longer needed.
type trustBundlePEM struct {
	pem       []byte
	refreshAt time.Time
}

type servingCert struct {
	cert    *tls.Certificate
	root    *rootState
	renewAt time.Time
}

// NewServer checks the configuration and sets up the watches of the CA Secret and of pods (started by Run).
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("ca: ServerConfig.Client is required")
	case cfg.Namespace == "":
		return nil, errors.New("ca: ServerConfig.Namespace (the mesh namespace) is required")
	case cfg.TrustDomain == "":
		return nil, errors.New("ca: ServerConfig.TrustDomain is required")
	case cfg.CASecret == "":
		return nil, errors.New("ca: ServerConfig.CASecret (the CA root Secret name) is required")
	case cfg.WorkloadTTL < 0:
		return nil, fmt.Errorf("ca: ServerConfig.WorkloadTTL %s is negative", cfg.WorkloadTTL)
	}
	if cfg.WorkloadTTL == 0 {
		cfg.WorkloadTTL = DefaultWorkloadTTL
	}
	if cfg.TokenAudience == "" {
		cfg.TokenAudience = DefaultTokenAudience
	}
	if cfg.NodeServiceAccount == "" {
		cfg.NodeServiceAccount = DefaultNodeServiceAccount
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = DefaultServiceAccount
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = cfg.ServiceAccount
	}
	s := &Server{cfg: cfg, log: cfg.Logger.WithName("ca"), now: time.Now}
	s.issued = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ambient_ca_certificates_issued_total", Help: "Workload certificates issued by the CA.",
	})
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambient_ca_certificates_refused_total", Help: "Certificate requests the CA refused, by reason.",
	}, []string{"reason"})
	s.expiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ambient_ca_root_expiry_timestamp_seconds", Help: "When the CA's signing certificate expires (Unix time); 0 while none is loaded.",
	})
	reviews := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambient_ca_token_reviews_total", Help: "TokenReviews sent to the API server, by result (authenticated, rejected, error); cached verdicts are not counted.",
	}, []string{"result"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.issued, s.refused, s.expiry, reviews} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("ca: register metrics: %w", err)
			}
		}
	}

	// One cluster-wide pod informer, stripped to the few fields authorization needs and indexed by
	// node and service account: "is there a pod of ns/sa on node N" is a map lookup, and the API server
	// sees one watch, not a list per request.
	s.pods = coreinformers.NewFilteredPodInformer(cfg.Client, metav1.NamespaceAll, 0, cache.Indexers{
		indexNodeAccount: func(obj any) ([]string, error) {
			pod, ok := obj.(*corev1.Pod)
			if !ok || pod.Spec.NodeName == "" {
				return nil, nil
			}
			return []string{nodeAccountKey(pod.Spec.NodeName, pod.Namespace, pod.Spec.ServiceAccountName)}, nil
		},
	}, nil)
	if err := s.pods.SetTransform(stripPod); err != nil {
		return nil, fmt.Errorf("ca: pod informer: %w", err)
	}
	// The Secret is watched by name: the operator's Role grants get/list/watch on that one Secret only.
	s.secrets = coreinformers.NewFilteredSecretInformer(cfg.Client, cfg.Namespace, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.CASecret).String()
	})
	onChange := func(any) { s.syncRoot() }
	if _, err := s.secrets.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onChange, DeleteFunc: onChange, UpdateFunc: func(_, _ any) { s.syncRoot() },
	}); err != nil {
		return nil, fmt.Errorf("ca: secret informer: %w", err)
	}

	s.auth = &Authenticator{
		client: cfg.Client, audience: cfg.TokenAudience, trustDomain: cfg.TrustDomain,
		meshNamespace: cfg.Namespace, nodeAccount: cfg.NodeServiceAccount,
		pods: s.pods.GetIndexer(), log: s.log, reviews: reviews, cacheTTL: defaultReviewCacheTTL, now: time.Now,
		cache: map[[sha256.Size]byte]reviewed{}, inflight: map[[sha256.Size]byte]*reviewCall{},
	}
	return s, nil
}

// Register registers the CertificateService on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	apiv1alpha1.RegisterCertificateServiceServer(r, s)
}

// Authenticator returns the server's token authenticator, for the xDS server to authenticate its
// subscribers the same way (it shares the server's TokenReview cache and pod informer).
func (s *Server) Authenticator() *Authenticator { return s.auth }

// Run starts the watches of the CA Secret and of pods and blocks until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.pods.RunWithContext(ctx) })
	wg.Go(func() { s.secrets.RunWithContext(ctx) })
	defer wg.Wait()
	if !cache.WaitForCacheSync(ctx.Done(), s.pods.HasSynced, s.secrets.HasSynced) {
		return fmt.Errorf("ca: caches did not sync: %w", ctx.Err())
	}
	s.syncRoot()
	s.synced.Store(true)
	s.log.Info("Certificate authority watches synced", "secret", s.secretRef(), "ready", s.Ready())
	<-ctx.Done()
	return nil
}

// Ready reports whether the watches have synced and the CA Secret is loaded.
func (s *Server) Ready() bool { return s.synced.Load() && s.root.Load() != nil }

// TrustBundlePEM returns the PEM trust bundle (the current root and rotated-out roots still needed),
// or nil before the CA Secret is loaded.
func (s *Server) TrustBundlePEM() []byte { return bytes.Clone(s.trustBundle()) }

func (s *Server) trustBundle() []byte {
	b := s.bundle.Load()
	if b == nil {
		return nil
	}
	if !b.refreshAt.IsZero() && !s.now().Before(b.refreshAt) {
		s.mu.Lock()
		if root := s.root.Load(); root != nil {
			s.setBundle(root.anchors)
		}
		s.mu.Unlock()
		if b = s.bundle.Load(); b == nil {
			return nil
		}
	}
	return b.pem
}

// TLSConfig returns a TLS 1.3 server configuration presenting ServingCertificate, for the gRPC listener
// the CA shares with the xDS server. Clients authenticate with tokens, not certificates.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: s.ServingCertificate, NextProtos: []string{"h2"}}
}

// ServingCertificate is a tls.Config GetCertificate callback returning the server's own certificate:
// identity spiffe://<td>/ns/<namespace>/sa/<service account>, DNS SANs <service>.<namespace>.svc,
// <service>.<namespace>.svc.cluster.local, <service>.<namespace>, <service> and localhost, IP SANs
// 127.0.0.1 and ::1, plus ExtraSANs. It is issued from the current root, lives WorkloadTTL, and is
// re-issued at half-life or as soon as the root changes. It fails while no root is loaded.
func (s *Server) ServingCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	root := s.root.Load()
	if root == nil {
		return nil, fmt.Errorf("ca: no serving certificate: CA Secret %s is not loaded", s.secretRef())
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc := s.serving; sc != nil && sc.root == root && now.Before(sc.renewAt) {
		return sc.cert, nil
	}
	cert, err := s.issueServing(root)
	if err != nil {
		if s.serving != nil && now.Before(s.serving.cert.Leaf.NotAfter) {
			s.log.Error(err, "Cannot renew the CA's serving certificate; keeping the current one")
			return s.serving.cert, nil
		}
		return nil, err
	}
	s.serving = &servingCert{cert: cert, root: root, renewAt: now.Add(cert.Leaf.NotAfter.Sub(now) / 2)}
	return cert, nil
}

func (s *Server) issueServing(root *rootState) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate serving key: %w", err)
	}
	svc, ns := s.cfg.ServiceName, s.cfg.Namespace
	dns := []string{svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local", svc + "." + ns, svc, "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, san := range s.cfg.ExtraSANs {
		if ip := net.ParseIP(san); ip != nil {
			ips = append(ips, ip)
		} else if san != "" {
			dns = append(dns, san)
		}
	}
	id := identity.New(s.cfg.TrustDomain, ns, s.cfg.ServiceAccount)
	leafPEM, err := root.signer.sign(&key.PublicKey, id, dns, ips, s.cfg.WorkloadTTL)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(leafPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: parse serving certificate: %w", err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf}
	for _, c := range root.chain {
		b, _ := pem.Decode([]byte(c))
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	return cert, nil
}

// CreateCertificate authenticates the caller, checks the CSR, authorizes the requested identity and signs it.
func (s *Server) CreateCertificate(ctx context.Context, req *apiv1alpha1.CertificateRequest) (*apiv1alpha1.CertificateResponse, error) {
	caller, err := s.auth.AuthenticateContext(ctx)
	if err != nil {
		reason := reasonUnauthenticated
		switch status.Code(err) {
		case codes.PermissionDenied:
			reason = reasonNotServiceAccount
		case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
			reason = reasonUnavailable
		}
		s.refused.WithLabelValues(reason).Inc()
		s.log.V(1).Info("Refused a certificate request", "reason", reason, "error", err.Error())
		return nil, err
	}
	if len(req.GetCsr()) > maxCSRBytes {
		return nil, s.refuse(caller, reasonInvalidRequest, codes.InvalidArgument, "CSR of %d bytes is larger than %d", len(req.GetCsr()), maxCSRBytes)
	}
	csr, id, err := ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, s.refuse(caller, reasonInvalidRequest, codes.InvalidArgument, "invalid CSR: %v", err)
	}
	if req.GetValiditySeconds() < 0 {
		return nil, s.refuse(caller, reasonInvalidRequest, codes.InvalidArgument, "validity_seconds %d is negative", req.GetValiditySeconds())
	}
	if err := s.authorize(ctx, caller, id); err != nil {
		return nil, err
	}
	root := s.root.Load()
	if root == nil {
		return nil, s.refuse(caller, reasonUnavailable, codes.Unavailable, "the CA is not ready: CA Secret %s is not loaded", s.secretRef())
	}
	now := s.now()
	if !now.Before(root.signer.NotAfter()) {
		return nil, s.refuse(caller, reasonUnavailable, codes.Unavailable, "the CA certificate in Secret %s expired at %s: rotate it", s.secretRef(), root.signer.NotAfter().UTC().Format(time.RFC3339))
	}
	ttl := s.cfg.WorkloadTTL
	if v := req.GetValiditySeconds(); v > 0 && v < int64(ttl/time.Second) {
		ttl = time.Duration(v) * time.Second
	}
	chainPEM, err := root.signer.Sign(csr, id, ttl) // capped at the root's expiry
	if err != nil {
		return nil, s.refuse(caller, reasonInternal, codes.Internal, "sign certificate for %s: %v", id, err)
	}
	leafBlock, _ := pem.Decode(chainPEM)
	resp := &apiv1alpha1.CertificateResponse{
		CertChain:   append([]string{string(pem.EncodeToMemory(leafBlock))}, root.chain...),
		TrustBundle: string(s.trustBundle()),
	}
	s.issued.Inc()
	s.log.V(1).Info("Issued a certificate", "identity", id.String(), "caller", caller.String(), "ttl", ttl.String())
	return resp, nil
}

// authorize decides whether the caller may have the identity id.
func (s *Server) authorize(ctx context.Context, caller Caller, id identity.Identity) error {
	if id.TrustDomain != s.cfg.TrustDomain {
		return s.refuse(caller, reasonForeignDomain, codes.PermissionDenied, "requested identity %s is not in the mesh's trust domain %q", id, s.cfg.TrustDomain)
	}
	isNodeAccount := caller.Identity.Namespace == s.cfg.Namespace && caller.Identity.ServiceAccount == s.cfg.NodeServiceAccount
	switch {
	case caller.NodeProxy:
		ok, err := s.podOnNode(ctx, caller.NodeName, id.Namespace, id.ServiceAccount)
		if err != nil {
			return s.refuse(caller, reasonUnavailable, codes.Unavailable, "cannot list the pods of node %q: %v", caller.NodeName, err)
		}
		if !ok {
			return s.refuse(caller, reasonNotOnNode, codes.PermissionDenied,
				"node proxy %s may not request %s: no running pod with service account %s/%s is scheduled on node %q",
				caller, id, id.Namespace, id.ServiceAccount, caller.NodeName)
		}
		return nil
	case isNodeAccount && caller.PodName == "":
		return s.refuse(caller, reasonUnboundToken, codes.PermissionDenied,
			"the node proxy's token is not bound to a pod, so it cannot prove its node: use a projected service-account token with the audience %q", s.cfg.TokenAudience)
	case isNodeAccount && caller.Waypoint == "" && caller.NodeName == "":
		return s.refuse(caller, reasonNotOnNode, codes.PermissionDenied, "node proxy %s is not scheduled on a node", caller)
	case id != caller.Identity:
		// Waypoints and every other workload get only their own identity.
		return s.refuse(caller, reasonNotOwnIdentity, codes.PermissionDenied,
			"%s may only request its own identity %s, not %s", caller, caller.Identity, id)
	}
	return nil
}

// podOnNode reports whether a pod of namespace/serviceAccount that has not terminated is scheduled on
// the node. It asks the informer; on a miss it asks the API server once (a pod scheduled an instant ago
// may not have reached the informer yet), with field selectors served from the API server's watch cache.
func (s *Server) podOnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error) {
	objs, err := s.pods.GetIndexer().ByIndex(indexNodeAccount, nodeAccountKey(node, namespace, serviceAccount))
	if err == nil {
		for _, o := range objs {
			if pod, ok := o.(*corev1.Pod); ok && !terminated(pod) {
				return true, nil
			}
		}
	}
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	list, err := s.cfg.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.AndSelectors(
			fields.OneTermEqualSelector("spec.nodeName", node),
			fields.OneTermEqualSelector("spec.serviceAccountName", serviceAccount),
		).String(),
	})
	if err != nil {
		return false, err
	}
	for i := range list.Items {
		if !terminated(&list.Items[i]) {
			return true, nil
		}
	}
	return false, nil
}

func terminated(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func nodeAccountKey(node, namespace, serviceAccount string) string {
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	return node + "/" + namespace + "/" + serviceAccount
}

// stripPod keeps only what authentication and authorization read, so that a cluster-wide pod cache
// costs a few hundred bytes per pod.
func stripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	if wp, ok := pod.Labels[LabelWaypoint]; ok {
		out.Labels = map[string]string{LabelWaypoint: wp}
	}
	return out, nil
}

// refuse counts and logs a refusal and returns it as a gRPC status error.
func (s *Server) refuse(caller Caller, reason string, code codes.Code, format string, args ...any) error {
	s.refused.WithLabelValues(reason).Inc()
	msg := fmt.Sprintf(format, args...)
	level := 0
	if code == codes.InvalidArgument {
		level = 1
	}
	s.log.V(level).Info("Refused a certificate request", "caller", caller.String(), "reason", reason, "message", msg)
	return status.Error(code, msg)
}

func (s *Server) secretRef() string { return s.cfg.Namespace + "/" + s.cfg.CASecret }

// syncRoot loads the CA Secret from the informer's store. A changed root is used for new certificates at
// once; the previous anchors stay in the trust bundle for as long as certificates they signed may live.
// A Secret that cannot be parsed leaves the current root in place; a deleted Secret makes the CA unready.
func (s *Server) syncRoot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.root.Load()
	obj, exists, err := s.secrets.GetStore().GetByKey(s.secretRef())
	secret, _ := obj.(*corev1.Secret)
	if err != nil || !exists || secret == nil {
		if cur != nil {
			s.retire(cur)
			s.root.Store(nil)
			s.bundle.Store(nil)
			s.expiry.Set(0)
			s.log.Info("CA Secret is gone; refusing certificate requests until it is back", "secret", s.secretRef())
		}
		return
	}
	next, err := s.loadRoot(secret)
	if err != nil {
		s.log.Error(err, "Cannot load the CA Secret; keeping the current root", "secret", s.secretRef())
		return
	}
	if cur != nil && cur.sum == next.sum {
		return
	}
	if cur != nil {
		s.retire(cur)
	}
	s.setBundle(next.anchors)
	s.root.Store(next)
	s.expiry.Set(float64(next.signer.NotAfter().Unix()))
	s.log.Info("Loaded the CA root", "secret", s.secretRef(), "notAfter", next.signer.NotAfter().UTC().Format(time.RFC3339), "rotated", cur != nil)
}

// retire keeps a replaced root's anchors trusted until the last certificate it signed expires; s.mu is held.
func (s *Server) retire(old *rootState) {
	until := s.now().Add(s.cfg.WorkloadTTL)
	for _, a := range old.anchors {
		u := until
		if a.NotAfter.Before(u) {
			u = a.NotAfter
		}
		s.retired = append(s.retired, retiredRoot{cert: a, until: u})
	}
}

// setBundle builds the PEM trust bundle from anchors and the retired roots still needed; s.mu is held.
func (s *Server) setBundle(anchors []*x509.Certificate) {
	now := s.now()
	var out []byte
	var refreshAt time.Time
	seen := map[[sha256.Size]byte]bool{}
	add := func(c *x509.Certificate) {
		sum := sha256.Sum256(c.Raw)
		if !seen[sum] {
			seen[sum] = true
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	for _, a := range anchors {
		add(a)
	}
	kept := s.retired[:0]
	for _, r := range s.retired {
		if now.Before(r.until) {
			kept = append(kept, r)
			add(r.cert)
			if refreshAt.IsZero() || r.until.Before(refreshAt) {
				refreshAt = r.until
			}
		}
	}
	s.retired = kept
	s.bundle.Store(&trustBundlePEM{pem: out, refreshAt: refreshAt})
}

func (s *Server) loadRoot(secret *corev1.Secret) (*rootState, error) {
	certPEM, keyPEM := secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("secret %s: data.%s and data.%s must both be set", s.secretRef(), corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	}
	signer, err := NewSigner(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", s.secretRef(), err)
	}
	chainCerts, err := caclient.ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("secret %s data.%s: %w", s.secretRef(), corev1.TLSCertKey, err)
	}
	r := &rootState{signer: signer, anchors: chainCerts[len(chainCerts)-1:]}
	for _, c := range chainCerts {
		r.chain = append(r.chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	if caPEM := secret.Data["ca.crt"]; len(bytes.TrimSpace(caPEM)) > 0 {
		if r.anchors, err = caclient.ParseCerts(caPEM); err != nil {
			return nil, fmt.Errorf("secret %s data.ca.crt: %w", s.secretRef(), err)
		}
	}
	h := sha256.New()
	for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey, "ca.crt"} {
		h.Write([]byte(k))
		h.Write(secret.Data[k])
	}
	copy(r.sum[:], h.Sum(nil))
	return r, nil
}
