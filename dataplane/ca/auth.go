package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// LabelWaypoint on a pod names the waypoint it is a replica of (the operator sets it on waypoint pods).
const LabelWaypoint = "ambient.dev/waypoint"

// Keys of a TokenReview's status.user.extra for a token bound to a pod (Kubernetes 1.30 and later;
// node-name is there even when the Node object does not exist, node-uid only when it does).
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

const (
	serviceAccountPrefix = "system:serviceaccount:"
	// maxTokenBytes bounds what is sent to the API server; projected tokens are about 1 KB.
	maxTokenBytes = 16 << 10
	// reviewTimeout bounds one TokenReview, independent of the callers waiting for it.
	reviewTimeout = 10 * time.Second
	// defaultReviewCacheTTL is how long a successful review is reused (never past the token's expiry).
	defaultReviewCacheTTL = time.Minute
	// maxReviewCacheEntries bounds the cache: beyond it, expired entries are swept, and if none are,
	// new reviews are not cached.
	maxReviewCacheEntries = 10000
)

// Caller is a client of the CA or xDS server, as the API server vouched for its service-account token.
type Caller struct {
	// Identity is the caller's service account as a SPIFFE identity in the mesh's trust domain.
	Identity identity.Identity
	// PodName and PodUID name the pod the token is bound to; empty for a token not bound to a pod.
	PodName string
	PodUID  string
	// NodeName is the node of that pod: from the token when the API server put it there, else from the
	// pod's spec.nodeName. Empty when not bound to a pod or the pod is not scheduled.
	NodeName string
	// Waypoint is the value of the pod's ambient.dev/waypoint label: the waypoint the caller is a replica of.
	Waypoint string
	// NodeProxy is true for the mesh's node proxy: the node service account in the mesh namespace, with a
	// token bound to a pod on a known node that is not a waypoint pod. Only a node proxy may act for
	// other identities (those of the pods on its node).
	NodeProxy bool
}

// String describes the caller for logs and error messages (never the token).
func (c Caller) String() string {
	s := c.Identity.Namespace + "/" + c.Identity.ServiceAccount
	if c.PodName != "" {
		s += " (pod " + c.Identity.Namespace + "/" + c.PodName
		if c.NodeName != "" {
			s += " on node " + c.NodeName
		}
		s += ")"
	}
	return s
}

// Authenticator turns a Kubernetes service-account token into a Caller: it reviews the token with the API
// server (TokenReview bound to the CA's audience), caches successful reviews by the token's SHA-256 for at
// most a minute and never past the token's expiry, coalesces concurrent reviews of one token, and checks
// that the pod a token is bound to still exists. The CA uses it for every request; the xDS server uses
// the same one for its subscribers. It never logs tokens.
type Authenticator struct {
	client        kubernetes.Interface
	audience      string
	trustDomain   string
	meshNamespace string
	nodeAccount   string
	pods          cache.Indexer // stripped pods of the server's informer
	log           logr.Logger
	reviews       *prometheus.CounterVec
	cacheTTL      time.Duration
	now           func() time.Time
	mu            sync.Mutex
	cache         map[[sha256.Size]byte]reviewed
	inflight      map[[sha256.Size]byte]*reviewCall
}

// reviewed is what a successful TokenReview said about a token.
type reviewed struct {
	namespace, serviceAccount string
	podName, podUID, nodeName string
	expires                   time.Time
}

type reviewCall struct {
	done chan struct{}
	rev  reviewed
	err  error
}

// Authenticate reviews a bearer token and describes its caller. Errors are gRPC status errors:
// Unauthenticated (no, malformed, rejected or expired token, or its pod is gone), PermissionDenied (a
// valid token that is not a service account's) and Unavailable (the API server could not be asked).
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, status.Error(codes.Unauthenticated, "no service-account token: send the metadata \"authorization: Bearer <token>\" with a token for the audience "+a.audience)
	}
	if len(token) > maxTokenBytes {
		return Caller{}, status.Errorf(codes.Unauthenticated, "service-account token longer than %d bytes", maxTokenBytes)
	}
	rev, err := a.review(ctx, token)
	if err != nil {
		return Caller{}, err
	}
	return a.callerFrom(ctx, rev)
}

// AuthenticateContext authenticates the caller of a gRPC request by the token in its incoming metadata
// ("authorization: Bearer <token>"), with the errors of Authenticate.
func (a *Authenticator) AuthenticateContext(ctx context.Context) (Caller, error) {
	return a.Authenticate(ctx, bearerToken(ctx))
}

func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(token)
		}
	}
	return ""
}

// review returns the (cached) TokenReview result of a token.
func (a *Authenticator) review(ctx context.Context, token string) (reviewed, error) {
	key := sha256.Sum256([]byte(token))
	a.mu.Lock()
	if rev, ok := a.cache[key]; ok {
		if a.now().Before(rev.expires) {
			a.mu.Unlock()
			return rev, nil
		}
		delete(a.cache, key)
	}
	call, ok := a.inflight[key]
	if !ok {
		call = &reviewCall{done: make(chan struct{})}
		a.inflight[key] = call
		// The review outlives a caller that gives up: others may be waiting for it.
		go func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
			defer cancel()
			call.rev, call.err = a.doReview(rctx, token)
			a.mu.Lock()
			delete(a.inflight, key)
			if call.err == nil {
				a.store(key, call.rev)
			}
			a.mu.Unlock()
			close(call.done)
		}()
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		return call.rev, call.err
	case <-ctx.Done():
		return reviewed{}, status.FromContextError(ctx.Err()).Err()
	}
}

// store caches a review; a.mu is held.
func (a *Authenticator) store(key [sha256.Size]byte, rev reviewed) {
	if len(a.cache) >= maxReviewCacheEntries {
		now := a.now()
		for k, v := range a.cache {
			if !now.Before(v.expires) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= maxReviewCacheEntries {
			return
		}
	}
	a.cache[key] = rev
}

func (a *Authenticator) doReview(ctx context.Context, token string) (reviewed, error) {
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{a.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		a.reviews.WithLabelValues("error").Inc()
		a.log.Error(err, "Cannot review a service-account token with the API server")
		return reviewed{}, status.Errorf(codes.Unavailable, "cannot review the service-account token: %v", err)
	}
	st := tr.Status
	if !st.Authenticated {
		a.reviews.WithLabelValues("rejected").Inc()
		msg := "service-account token rejected by the API server"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return reviewed{}, status.Errorf(codes.Unauthenticated, "%s (want a token for the audience %q)", msg, a.audience)
	}
	// An authenticator that ignores audiences answers without them: such a token is not ours.
	if !slices.Contains(st.Audiences, a.audience) {
		a.reviews.WithLabelValues("rejected").Inc()
		return reviewed{}, status.Errorf(codes.Unauthenticated, "token is not valid for the audience %q", a.audience)
	}
	a.reviews.WithLabelValues("authenticated").Inc()
	rest, ok := strings.CutPrefix(st.User.Username, serviceAccountPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return reviewed{}, status.Errorf(codes.PermissionDenied, "user %q is not a Kubernetes service account: only service accounts get mesh certificates", st.User.Username)
	}
	now := a.now()
	rev := reviewed{
		namespace: ns, serviceAccount: sa,
		podName:  first(st.User.Extra[extraPodName]),
		podUID:   first(st.User.Extra[extraPodUID]),
		nodeName: first(st.User.Extra[extraNodeName]),
		expires:  now.Add(a.cacheTTL),
	}
	if exp, ok := jwtExpiry(token); ok && exp.Before(rev.expires) {
		rev.expires = exp
	}
	return rev, nil
}

// callerFrom completes a review with the bound pod: it must still exist (a cached review may be up to a
// minute old), its labels say whether it is a waypoint, and its spec.nodeName is the node when the token
// did not carry one.
func (a *Authenticator) callerFrom(ctx context.Context, rev reviewed) (Caller, error) {
	c := Caller{
		Identity: identity.New(a.trustDomain, rev.namespace, rev.serviceAccount),
		PodName:  rev.podName, PodUID: rev.podUID, NodeName: rev.nodeName,
	}
	if c.PodName != "" {
		pod, err := a.boundPod(ctx, rev.namespace, rev.podName, rev.podUID)
		if err != nil {
			return Caller{}, err
		}
		c.Waypoint = pod.Labels[LabelWaypoint]
		if c.NodeName == "" {
			c.NodeName = pod.Spec.NodeName
		}
	}
	c.NodeProxy = rev.namespace == a.meshNamespace && rev.serviceAccount == a.nodeAccount &&
		c.PodName != "" && c.NodeName != "" && c.Waypoint == ""
	return c, nil
}

// boundPod finds the pod a token is bound to in the informer, or asks the API server when the informer
// does not (yet) have it.
func (a *Authenticator) boundPod(ctx context.Context, ns, name, uid string) (*corev1.Pod, error) {
	if obj, ok, _ := a.pods.GetByKey(ns + "/" + name); ok {
		if pod, _ := obj.(*corev1.Pod); pod != nil && (uid == "" || string(pod.UID) == uid) {
			return pod, nil
		}
	}
	pod, err := a.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "cannot look up pod %s/%s of the caller: %v", ns, name, err)
	case uid == "" || string(pod.UID) == uid:
		return pod, nil
	}
	return nil, status.Errorf(codes.Unauthenticated, "the token is bound to pod %s/%s (uid %s), which no longer exists", ns, name, uid)
}

// jwtExpiry reads the exp claim of a JWT without verifying it: only to shorten how long the API server's
// verdict is cached.
func jwtExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(int64(*claims.Exp), 0), true
}

func first(v authenticationv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
