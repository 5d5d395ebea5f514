package authz

import (
	"iter"
	"strings"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Set is a snapshot of the compiled policies of the mesh, indexed for selecting the policies that apply
// to a target. It is immutable once built and safe for concurrent use; a nil *Set holds no policies.
type Set struct {
	all    []*Policy
	byKey  map[string]*Policy
	byName map[string]map[string]*Policy // namespace -> name -> policy
	global []*Policy
	byNS   map[string][]*Policy // NAMESPACE scope, by the policy's namespace
	byWP   map[string][]*Policy // WAYPOINT scope, by the waypoint's "<namespace>/<name>"
}

// NewSet indexes compiled policies in O(len(policies)). Nil entries are skipped; when two policies have
// the same key the later one replaces the earlier one (at the earlier one's position). Selections list
// policies in the order given here, so pass them in a stable order (e.g. sorted by key) to get stable
// deciding policies in [Decision]. NewSet does not modify policies and does not keep the slice.
func NewSet(policies []*Policy) *Set {
	s := &Set{
		all:    make([]*Policy, 0, len(policies)),
		byKey:  make(map[string]*Policy, len(policies)),
		byName: make(map[string]map[string]*Policy),
		byNS:   make(map[string][]*Policy),
		byWP:   make(map[string][]*Policy),
	}
	pos := make(map[string]int, len(policies))
	for _, p := range policies {
		if p == nil {
			continue
		}
		if i, dup := pos[p.key]; dup {
			s.all[i] = p
		} else {
			pos[p.key] = len(s.all)
			s.all = append(s.all, p)
		}
		s.byKey[p.key] = p
	}
	for _, p := range s.all {
		names := s.byName[p.namespace]
		if names == nil {
			names = make(map[string]*Policy)
			s.byName[p.namespace] = names
		}
		names[p.name] = p
		switch p.scope {
		case api.Scope_GLOBAL:
			s.global = append(s.global, p)
		case api.Scope_NAMESPACE:
			s.byNS[p.namespace] = append(s.byNS[p.namespace], p)
		case api.Scope_WAYPOINT:
			s.byWP[p.waypoint] = append(s.byWP[p.waypoint], p)
		case api.Scope_WORKLOAD_SELECTOR, api.Scope_SERVICE:
			// Selected by name, through byName.
		}
	}
	return s
}

// Len returns the number of policies in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.all)
}

// Get returns the policy "<namespace>/<name>", or nil.
func (s *Set) Get(key string) *Policy {
	if s == nil {
		return nil
	}
	return s.byKey[key]
}

// All returns the policies of the set in the order they were given to [NewSet].
func (s *Set) All() iter.Seq[*Policy] {
	return func(yield func(*Policy) bool) {
		if s == nil {
			return
		}
		for _, p := range s.all {
			if !yield(p) {
				return
			}
		}
	}
}

// ForWorkload appends to dst the policies that the node proxy enforces for a destination workload in
// namespace ns whose Workload.authorization_policies is listed, and returns the extended slice: the GLOBAL
// policies, the NAMESPACE policies of ns, and the WORKLOAD_SELECTOR policies named in listed ("<name>" in
// ns or "<namespace>/<name>"). Listed names that are unknown or name a policy of another scope are
// ignored (the policy may not have arrived yet; a NAMESPACE or GLOBAL one is selected anyway). ForWorkload
// does not allocate when dst has room, so a caller can reuse a buffer per connection.
func (s *Set) ForWorkload(ns string, listed []string, dst []*Policy) []*Policy {
	if s == nil {
		return dst
	}
	dst = append(dst, s.global...)
	dst = append(dst, s.byNS[ns]...)
	return s.appendListed(dst, ns, listed, api.Scope_WORKLOAD_SELECTOR)
}

// ForWaypoint appends to dst the policies that the waypoint whose Service is waypointKey
// ("<namespace>/<name>") enforces for a connection to a destination Service in namespace serviceNS whose
// Service.authorization_policies is listed, and returns the extended slice: the WAYPOINT policies whose
// waypoint resolves to waypointKey and the SERVICE policies named in listed ("<name>" in serviceNS or
// "<namespace>/<name>"; unknown names and policies of another scope are ignored). For a destination that is
// not a Service (a workload addressed directly) pass an empty listed. ForWaypoint does not allocate when dst
// has room.
func (s *Set) ForWaypoint(waypointKey, serviceNS string, listed []string, dst []*Policy) []*Policy {
	if s == nil {
		return dst
	}
	dst = append(dst, s.byWP[waypointKey]...)
	return s.appendListed(dst, serviceNS, listed, api.Scope_SERVICE)
}

// appendListed appends the policies of the given scope named in listed, relative to ns, once each.
func (s *Set) appendListed(dst []*Policy, ns string, listed []string, scope api.Scope) []*Policy {
	start := len(dst)
	for _, ref := range listed {
		pns, name, ok := strings.Cut(ref, "/")
		if !ok {
			pns, name = ns, ref
		}
		p := s.byName[pns][name]
		if p == nil || p.scope != scope || containsPolicy(dst[start:], p) {
			continue
		}
		dst = append(dst, p)
	}
	return dst
}

func containsPolicy(ps []*Policy, p *Policy) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
