package xds

import (
	"strconv"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
)

// subscriber is the server's state of one stream. Its queue is a map per type from resource name to the
// latest entry (nil: removal), so a subscriber that cannot keep up holds at most one pending change per
// resource, whatever the rate of changes, and its sender drains the map into one response per type.
type subscriber struct {
	info NodeInfo
	id   string
	wake chan struct{}

	mu         sync.Mutex
	subscribed [numTypes]bool
	needFull   [numTypes]bool
	initial    [numTypes]map[string]string
	pending    [numTypes]map[string]*entry
	// nacked: the versions the client refused; they are not sent again (a newer version is).
	nacked      [numTypes]map[string]string
	nonceSeq    uint64
	outstanding map[string]sentResponse
	order       []string // nonces of outstanding, oldest first
}

// sentResponse is what a response carried, to remember its versions if it is NACKed.
type sentResponse struct {
	t       int
	entries []*entry
}

func newSubscriber(info NodeInfo, id uint64) *subscriber {
	s := &subscriber{info: info, id: strconv.FormatUint(id, 10), wake: make(chan struct{}, 1), outstanding: map[string]sentResponse{}}
	for t := range numTypes {
		s.pending[t] = map[string]*entry{}
		s.nacked[t] = map[string]string{}
	}
	return s
}

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// enqueue adds changes to the queue of the types the subscriber subscribed to. It never blocks on the
// stream.
func (s *subscriber) enqueue(items []item) {
	s.mu.Lock()
	n := 0
	for _, it := range items {
		if !s.subscribed[it.t] || s.needFull[it.t] {
			continue // the initial state, still to be sent, will carry it
		}
		s.pending[it.t][it.name] = it.e
		n++
	}
	s.mu.Unlock()
	if n > 0 {
		s.signal()
	}
}

// takePending empties the queue of a type, leaving out versions the client refused.
func (s *subscriber) takePending(t int) ([]*entry, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending[t]) == 0 {
		return nil, nil
	}
	var upserts []*entry
	var removals []string
	for name, e := range s.pending[t] {
		if e == nil {
			// The refused version stays remembered: if the same bytes come back, they are still refused.
			removals = append(removals, name)
			continue
		}
		if v, ok := s.nacked[t][name]; ok {
			if v == e.version {
				continue
			}
			delete(s.nacked[t], name)
		}
		upserts = append(upserts, e)
	}
	clear(s.pending[t])
	return upserts, removals
}

func (s *subscriber) nonce() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nonceSeq++
	return strconv.FormatUint(s.nonceSeq, 10)
}

// sent remembers a response until it is ACKed or NACKed.
func (s *subscriber) sent(nonce string, t int, entries []*entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outstanding[nonce] = sentResponse{t: t, entries: entries}
	s.order = append(s.order, nonce)
	for len(s.outstanding) > maxOutstanding && len(s.order) > 0 {
		delete(s.outstanding, s.order[0])
		s.order = s.order[1:]
	}
	if len(s.order) > 4*maxOutstanding {
		s.order = compactOrder(s.order, s.outstanding)
	}
}

func compactOrder(order []string, live map[string]sentResponse) []string {
	out := order[:0]
	for _, n := range order {
		if _, ok := live[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

// handle processes one request: a subscription (the first request of a type, or a new wildcard
// subscription), an ACK, or a NACK.
func (s *subscriber) handle(req *discoveryv3.DeltaDiscoveryRequest, log logr.Logger, m *Metrics) {
	t, ok := typeIndex(req.GetTypeUrl())
	if !ok {
		log.V(1).Info("Ignoring a request for an unknown type", "type", req.GetTypeUrl())
		return
	}
	if nonce := req.GetResponseNonce(); nonce != "" {
		s.mu.Lock()
		sr, known := s.outstanding[nonce]
		delete(s.outstanding, nonce)
		if req.GetErrorDetail() != nil && known {
			for _, e := range sr.entries {
				s.nacked[sr.t][e.name] = e.version
			}
		}
		s.mu.Unlock()
		if req.GetErrorDetail() != nil {
			m.nack(t)
			log.Info("xDS subscriber rejected a response (NACK); its versions will not be sent again",
				"type", typeNames[t], "nonce", nonce, "resources", len(sr.entries), "error", req.GetErrorDetail().GetMessage())
		}
		if len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 {
			return
		}
	}
	unsubscribe := false
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			unsubscribe = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if unsubscribe {
		s.subscribed[t], s.needFull[t] = false, false
		clear(s.pending[t])
		return
	}
	// Every subscription is a wildcard one: the server decides the scope. A request without a nonce
	// (the first of a type on a stream, or a new subscription) gets the full state, minus what the
	// client says it holds.
	if req.GetResponseNonce() != "" && s.subscribed[t] {
		return
	}
	s.subscribed[t] = true
	s.needFull[t] = true
	s.initial[t] = req.GetInitialResourceVersions()
	clear(s.pending[t])
	s.signal()
}
