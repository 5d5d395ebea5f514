package xds

import (
	"context"
	"errors"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// InitialSyncDone marks the end of a type's initial state on a stream (see xdsclient.InitialSyncDone).
const InitialSyncDone = xdsclient.InitialSyncDone

// Defaults of ServerOptions.
const (
	DefaultMaxResponseBytes       = 1 << 20
	DefaultInitialSyncConcurrency = 4
	// maxOutstanding bounds the responses per stream whose ACK is awaited (older ones are forgotten: a late
	// NACK of them is only counted).
	maxOutstanding = 256
)

// Change is a new version of one resource, or its removal, with who needs it.
type Change struct {
	// TypeURL is one of apiv1alpha1's WorkloadType, ServiceType or AuthorizationType.
	TypeURL string
	// Name is the resource name, "<namespace>/<name>".
	Name string
	// Resource is the new resource, nil for a removal.
	Resource proto.Message
	// Nodes says whether node proxies receive the resource.
	Nodes bool
	// Waypoints are the keys ("<namespace>/<name>" of the waypoint's Service) of the waypoints whose
	// subscribers receive the resource.
	Waypoints []string
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Authenticator verifies subscribers' tokens. Required.
	Authenticator Authenticator
	// MeshNamespace is the namespace of the node proxies' service account. Required.
	MeshNamespace string
	// NodeServiceAccount is the node proxies' service account; default DefaultNodeServiceAccount.
	NodeServiceAccount string
	// MaxResponseBytes bounds the resources of one response (the initial state is split); default
	// DefaultMaxResponseBytes.
	MaxResponseBytes int
	// InitialSyncConcurrency bounds how many streams build their initial state at once, so that a
	// reconnect storm does not hold the whole mesh in memory once per subscriber; default
	// DefaultInitialSyncConcurrency.
	InitialSyncConcurrency int
	// PreEncoded says that the gRPC server was created with grpc.ForceServerCodecV2(Codec()): responses
	// are then written from bytes encoded once per resource. Without it they are marshalled per stream.
	PreEncoded bool
	// Logger logs one line per stream and every NACK.
	Logger logr.Logger
	// Metrics records server metrics; nil records nothing.
	Metrics *Metrics
}

// Server serves the compact resources over delta ADS (DeltaAggregatedResources). Feed it with Apply; it
// keeps each resource encoded once, with a version that is a hash of its encoding (stable across
// restarts, so that a reconnecting client is not sent what it holds), and pushes each change only to the
// subscribers that need it through per-subscriber coalescing queues.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	opts    ServerOptions
	log     logr.Logger
	metrics *Metrics
	syncSem chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	nextID  atomic.Uint64

	mu      sync.RWMutex
	entries [numTypes]map[string]*entry
	// members: waypoint key -> the resources of each type its subscribers receive.
	members  map[string]*[numTypes]map[string]struct{}
	nodeSubs map[*subscriber]struct{}
	wpSubs   map[string]map[*subscriber]struct{}
}

// entry is one resource as sent: immutable once created.
type entry struct {
	name    string
	version string
	// enc is the encoded discovery Resource (name, version, Any); value, a sub-slice of it, the encoded
	// resource itself.
	enc, value []byte
	nodes      bool
	waypoints  []string // sorted, unique
}

// NewServer returns a server with no resources.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Authenticator == nil {
		return nil, errors.New("xds: ServerOptions.Authenticator is required")
	}
	if opts.MeshNamespace == "" {
		return nil, errors.New("xds: ServerOptions.MeshNamespace is required")
	}
	if opts.NodeServiceAccount == "" {
		opts.NodeServiceAccount = DefaultNodeServiceAccount
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if opts.InitialSyncConcurrency <= 0 {
		opts.InitialSyncConcurrency = DefaultInitialSyncConcurrency
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts: opts, log: opts.Logger.WithName("xds"), metrics: opts.Metrics,
		syncSem: make(chan struct{}, opts.InitialSyncConcurrency),
		ctx:     ctx, cancel: cancel,
		members:  map[string]*[numTypes]map[string]struct{}{},
		nodeSubs: map[*subscriber]struct{}{},
		wpSubs:   map[string]map[*subscriber]struct{}{},
	}
	for i := range s.entries {
		s.entries[i] = map[string]*entry{}
	}
	return s, nil
}

// Register registers the ADS service on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(r, s)
}

// Close ends every stream (with status Unavailable, so that clients reconnect, to another replica) and
// refuses new ones. Call it before stopping the gRPC server: xDS streams never end on their own.
func (s *Server) Close() { s.cancel() }

// Subscribers returns the number of connected subscribers.
func (s *Server) Subscribers() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := len(s.nodeSubs)
	for _, subs := range s.wpSubs {
		n += len(subs)
	}
	return n
}

// Counts returns how many resources of each type the server holds: workloads, services, policies.
func (s *Server) Counts() (workloads, services, policies int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries[typeWorkload]), len(s.entries[typeService]), len(s.entries[typeAuthorization])
}

// item is one queued change for a subscriber: e == nil is a removal.
type item struct {
	t    int
	name string
	e    *entry
}

// Apply installs changes and queues them for the subscribers that need them. Changes whose encoding and
// audience did not change cost a hash and nothing else. Apply never waits for a subscriber.
func (s *Server) Apply(changes []Change) {
	if len(changes) == 0 {
		return
	}
	encoded := encodeAll(changes)
	nodeItems := make([]item, 0, len(changes))
	wpItems := map[string][]item{}
	addWp := func(w string, it item) { wpItems[w] = append(wpItems[w], it) }

	s.mu.Lock()
	defer s.mu.Unlock()
	var counted [numTypes]bool
	for i, c := range changes {
		t, ok := typeIndex(c.TypeURL)
		if !ok {
			s.log.Error(nil, "Dropping a change of an unknown resource type", "type", c.TypeURL, "name", c.Name)
			continue
		}
		counted[t] = true
		old := s.entries[t][c.Name]
		if c.Resource == nil {
			if old == nil {
				continue
			}
			delete(s.entries[t], c.Name)
			for _, w := range old.waypoints {
				s.removeMember(w, t, c.Name)
				addWp(w, item{t, c.Name, nil})
			}
			if old.nodes {
				nodeItems = append(nodeItems, item{t, c.Name, nil})
			}
			continue
		}
		e := encoded[i].e
		if encoded[i].err != nil {
			s.log.Error(encoded[i].err, "Dropping a resource that does not encode", "type", typeNames[t], "name", c.Name)
			continue
		}
		if old != nil && old.version == e.version {
			if old.nodes == e.nodes && slices.Equal(old.waypoints, e.waypoints) {
				continue
			}
			e.enc, e.value = old.enc, old.value // same bytes: share them
		}
		s.entries[t][c.Name] = e
		changed := old == nil || old.version != e.version
		var oldWps []string
		if old != nil {
			oldWps = old.waypoints
		}
		for _, w := range oldWps {
			if _, keep := slices.BinarySearch(e.waypoints, w); !keep {
				s.removeMember(w, t, c.Name)
				addWp(w, item{t, c.Name, nil})
			}
		}
		for _, w := range e.waypoints {
			_, had := slices.BinarySearch(oldWps, w)
			if !had {
				s.addMember(w, t, c.Name)
			}
			if changed || !had {
				addWp(w, item{t, c.Name, e})
			}
		}
		switch {
		case e.nodes && (changed || !old.nodes):
			nodeItems = append(nodeItems, item{t, c.Name, e})
		case !e.nodes && old != nil && old.nodes:
			nodeItems = append(nodeItems, item{t, c.Name, nil})
		}
	}
	for t, ok := range counted {
		if ok {
			s.metrics.setResources(t, len(s.entries[t]))
		}
	}
	if len(nodeItems) > 0 {
		for sub := range s.nodeSubs {
			sub.enqueue(nodeItems)
		}
	}
	for w, items := range wpItems {
		for sub := range s.wpSubs[w] {
			sub.enqueue(items)
		}
	}
}

type encodedChange struct {
	e   *entry
	err error
}

// parallelEncode is the number of changes from which Apply encodes on every CPU.
const parallelEncode = 1024

// encodeAll encodes the upserts of changes (outside the lock: encoding is the bulk of the work of a
// large batch, such as the initial build).
func encodeAll(changes []Change) []encodedChange {
	out := make([]encodedChange, len(changes))
	encode := func(i int) {
		if changes[i].Resource != nil {
			out[i].e, out[i].err = newEntry(changes[i])
		}
	}
	workers := runtime.GOMAXPROCS(0)
	if len(changes) < parallelEncode || workers < 2 {
		for i := range changes {
			encode(i)
		}
		return out
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(changes); i += workers {
				encode(i)
			}
		})
	}
	wg.Wait()
	return out
}

func newEntry(c Change) (*entry, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c.Resource)
	if err != nil {
		return nil, err
	}
	version := strconv.FormatUint(xxhash.Sum64(b), 36)
	enc, value := encodeResource(c.Name, version, c.TypeURL, b)
	wps := slices.Clone(c.Waypoints)
	slices.Sort(wps)
	wps = slices.Compact(wps)
	if len(wps) == 0 {
		wps = nil
	}
	return &entry{name: c.Name, version: version, enc: enc, value: value, nodes: c.Nodes, waypoints: wps}, nil
}

func (s *Server) addMember(w string, t int, name string) {
	m := s.members[w]
	if m == nil {
		m = &[numTypes]map[string]struct{}{}
		s.members[w] = m
	}
	if m[t] == nil {
		m[t] = map[string]struct{}{}
	}
	m[t][name] = struct{}{}
}

func (s *Server) removeMember(w string, t int, name string) {
	m := s.members[w]
	if m == nil {
		return
	}
	delete(m[t], name)
	for _, set := range m {
		if len(set) > 0 {
			return
		}
	}
	delete(s.members, w)
}

func (s *Server) addSubscriber(sub *subscriber) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sub.info.Role == RoleNode {
		s.nodeSubs[sub] = struct{}{}
	} else {
		w := waypointKey(sub.info)
		if s.wpSubs[w] == nil {
			s.wpSubs[w] = map[*subscriber]struct{}{}
		}
		s.wpSubs[w][sub] = struct{}{}
	}
	s.metrics.subscriber(sub.info.Role, 1)
}

func (s *Server) removeSubscriber(sub *subscriber) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sub.info.Role == RoleNode {
		delete(s.nodeSubs, sub)
	} else {
		w := waypointKey(sub.info)
		delete(s.wpSubs[w], sub)
		if len(s.wpSubs[w]) == 0 {
			delete(s.wpSubs, w)
		}
	}
	s.metrics.subscriber(sub.info.Role, -1)
}

// DeltaAggregatedResources serves one subscriber: it authenticates it from its first request, then sends
// the initial state of each type it subscribes to and every later change in its scope, and handles its
// ACKs and NACKs.
func (s *Server) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	info, err := xdsclient.ParseNode(first.GetNode())
	if err != nil {
		s.metrics.refuse("bad_request")
		return status.Error(codes.InvalidArgument, err.Error())
	}
	token := bearerToken(ctx)
	if token == "" {
		s.metrics.refuse("unauthenticated")
		return status.Error(codes.Unauthenticated, "no bearer token in the authorization metadata")
	}
	caller, err := s.opts.Authenticator.Authenticate(ctx, token)
	if err != nil {
		s.metrics.refuse("unauthenticated")
		s.log.Info("Refusing an xDS subscriber whose token does not authenticate", "subscriber", info.String(), "error", err.Error())
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Unauthenticated, err.Error())
	}
	if err := authorize(info, caller, s.opts.MeshNamespace, s.opts.NodeServiceAccount); err != nil {
		s.metrics.refuse("forbidden")
		s.log.Info("Refusing an xDS subscriber", "subscriber", info.String(), "error", err.Error())
		return status.Error(codes.PermissionDenied, err.Error())
	}

	sub := newSubscriber(info, s.nextID.Add(1))
	log := s.log.WithValues("subscriber", info.String(), "stream", sub.id)
	s.addSubscriber(sub)
	defer s.removeSubscriber(sub)
	log.Info("xDS subscriber connected", "serviceAccount", caller.Namespace+"/"+caller.ServiceAccount)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recvErr := make(chan error, 1)
	sub.handle(first, log, s.metrics)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				cancel()
				return
			}
			sub.handle(req, log, s.metrics)
		}
	}()
	err = s.sendLoop(ctx, stream, sub)
	switch {
	case s.ctx.Err() != nil:
		log.Info("xDS subscriber disconnected: the server is shutting down")
		return status.Error(codes.Unavailable, "xDS server shutting down")
	case err != nil && ctx.Err() == nil:
		log.Info("xDS subscriber disconnected: send failed", "error", err.Error())
		return err
	}
	select {
	case err := <-recvErr:
		log.Info("xDS subscriber disconnected", "reason", err.Error())
	default:
		log.Info("xDS subscriber disconnected")
	}
	return nil
}

// sendLoop sends queued changes until the stream or the server ends.
func (s *Server) sendLoop(ctx context.Context, stream grpc.ServerStream, sub *subscriber) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.ctx.Done():
			return nil
		case <-sub.wake:
		}
		for t := range numTypes {
			if err := s.flush(ctx, stream, sub, t); err != nil {
				return err
			}
		}
	}
}

// flush sends what is queued for one type: the initial state (when the type was just subscribed) or the
// coalesced changes, split into responses of at most MaxResponseBytes.
func (s *Server) flush(ctx context.Context, stream grpc.ServerStream, sub *subscriber, t int) error {
	sub.mu.Lock()
	full := sub.needFull[t]
	sub.mu.Unlock()
	var upserts []*entry
	var removals []string
	marker := ""
	if full {
		select {
		case s.syncSem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		upserts, removals = s.initialState(sub, t)
		marker = InitialSyncDone
	} else {
		upserts, removals = sub.takePending(t)
		if len(upserts) == 0 && len(removals) == 0 {
			return nil
		}
	}
	err := s.send(stream, sub, t, upserts, removals, marker)
	if full {
		<-s.syncSem
	}
	return err
}

// initialState lists the resources of a type in the subscriber's scope that it does not hold at their
// version, and removals of those it holds that are gone. It runs under the read lock so that no change
// falls between the state it lists and the queue it clears.
func (s *Server) initialState(sub *subscriber, t int) ([]*entry, []string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sub.mu.Lock()
	held := sub.initial[t]
	sub.initial[t] = nil
	sub.needFull[t] = false
	clear(sub.pending[t])
	nacked := maps.Clone(sub.nacked[t])
	sub.mu.Unlock()

	var upserts []*entry
	inScope := func(name string, e *entry) {
		if v, ok := held[name]; ok {
			delete(held, name)
			if v == e.version {
				return
			}
		}
		if nacked[name] == e.version {
			return
		}
		upserts = append(upserts, e)
	}
	if sub.info.Role == RoleNode {
		for name, e := range s.entries[t] {
			if e.nodes {
				inScope(name, e)
			}
		}
	} else if m := s.members[waypointKey(sub.info)]; m != nil {
		for name := range m[t] {
			inScope(name, s.entries[t][name])
		}
	}
	removals := make([]string, 0, len(held))
	for name := range held {
		removals = append(removals, name)
	}
	return upserts, removals
}

// send writes upserts and removals as one or more responses.
func (s *Server) send(stream grpc.ServerStream, sub *subscriber, t int, upserts []*entry, removals []string, marker string) error {
	for {
		n, size := 0, 0
		for n < len(upserts) && (n == 0 || size+len(upserts[n].enc) <= s.opts.MaxResponseBytes) {
			size += len(upserts[n].enc)
			n++
		}
		chunk := upserts[:n]
		upserts = upserts[n:]
		last := len(upserts) == 0
		sys := ""
		if last {
			sys = marker
		}
		nonce := sub.nonce()
		var msg any
		if s.opts.PreEncoded {
			msg = &encodedResponse{b: encodeResponse(typeURLs[t], nonce, sys, chunk, removals)}
		} else {
			msg = responseMessage(typeURLs[t], nonce, sys, chunk, removals)
		}
		sub.sent(nonce, t, chunk)
		if err := stream.SendMsg(msg); err != nil {
			return err
		}
		s.metrics.response(t, len(chunk)+len(removals))
		removals = nil
		if last {
			return nil
		}
	}
}
