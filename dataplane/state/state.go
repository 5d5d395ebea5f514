// Package state is the data plane's view of the mesh: an immutable Snapshot of workloads, services and
// authorization policies, indexed for the data path (by address, by service, by node), and a Store that
// applies deltas (from the xDS client or a reloaded config file) by building a new Snapshot and swapping it
// atomically. The hot path reads a Snapshot without a lock; a change of one resource copies a small shard
// of each index, not the whole mesh.
package state

import (
	"cmp"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Workload is a workload resource resolved for the data path.
type Workload struct {
	// Proto is the resource as received; read-only.
	Proto *api.Workload
	// Key is "<namespace>/<name>".
	Key       string
	Addresses []netip.Addr
	Identity  identity.Identity
	// Services the workload serves, with resolved keys.
	Services []ServiceBinding
	// Waypoint is the resolved key of the waypoint's Service, or "".
	Waypoint string
	// Policies are the resolved keys of the WORKLOAD_SELECTOR policies that select the workload.
	Policies []string
}

// Name of the workload.
func (w *Workload) Name() string { return w.Proto.GetName() }

// Namespace of the workload.
func (w *Workload) Namespace() string { return w.Proto.GetNamespace() }

// Node the workload runs on.
func (w *Workload) Node() string { return w.Proto.GetNode() }

// Healthy reports whether the workload takes traffic.
func (w *Workload) Healthy() bool { return w.Proto.GetStatus() == api.WorkloadStatus_HEALTHY }

// InMesh reports whether peers reach the workload over HBONE.
func (w *Workload) InMesh() bool { return w.Proto.GetTunnel() == api.TunnelProtocol_HBONE }

// ServiceBinding is a service a workload serves.
type ServiceBinding struct {
	// Service is the resolved key "<namespace>/<name>".
	Service string
	Ports   []*api.PortMapping
}

// TargetPort returns the workload's port for a service port, and whether it serves that port.
func (b ServiceBinding) TargetPort(servicePort uint16) (uint16, bool) {
	for _, p := range b.Ports {
		if p.GetServicePort() == uint32(servicePort) {
			if t := p.GetTargetPort(); t != 0 {
				return uint16(t), true // #nosec G115 -- validated to be at most 65535
			}
			return servicePort, true
		}
	}
	return 0, false
}

// Service is a service resource resolved for the data path.
type Service struct {
	Proto     *api.Service
	Key       string
	Addresses []netip.Addr
	Waypoint  string
	Policies  []string
}

// Name of the service.
func (s *Service) Name() string { return s.Proto.GetName() }

// Namespace of the service.
func (s *Service) Namespace() string { return s.Proto.GetNamespace() }

// HasPort reports whether the service has a port, and its default target port.
func (s *Service) HasPort(port uint16) (uint16, bool) {
	for _, p := range s.Proto.GetPorts() {
		if p.GetPort() == uint32(port) {
			if t := p.GetTargetPort(); t != 0 {
				return uint16(t), true // #nosec G115 -- validated to be at most 65535
			}
			return port, true
		}
	}
	return 0, false
}

// Endpoint is a workload behind a service.
type Endpoint struct {
	Workload *Workload
}

// Snapshot is one immutable version of the mesh state.
type Snapshot struct {
	version     uint64
	trustDomain string

	workloads      cowMap[string, *Workload]
	workloadByAddr cowMap[netip.Addr, *Workload]
	services       cowMap[string, *Service]
	serviceByAddr  cowMap[netip.Addr, *Service]
	// endpoints: service key -> the keys of the workloads that bind it, sorted.
	endpoints cowMap[string, []string]
	// byNode: node -> the keys of its workloads, sorted.
	byNode cowMap[string, []string]

	policyProtos map[string]*api.Authorization
	policies     *authz.Set
}

// Version counts the snapshots a Store made; it grows by one per change.
func (s *Snapshot) Version() uint64 { return s.version }

// TrustDomain is the mesh's trust domain.
func (s *Snapshot) TrustDomain() string { return s.trustDomain }

// Workload returns a workload by key ("<namespace>/<name>").
func (s *Snapshot) Workload(key string) *Workload {
	w, _ := s.workloads.Get(key)
	return w
}

// WorkloadByAddr returns the workload with an address.
func (s *Snapshot) WorkloadByAddr(a netip.Addr) *Workload {
	w, _ := s.workloadByAddr.Get(a.Unmap())
	return w
}

// Service returns a service by key.
func (s *Snapshot) Service(key string) *Service {
	v, _ := s.services.Get(key)
	return v
}

// ServiceByAddr returns the service with a virtual address.
func (s *Snapshot) ServiceByAddr(a netip.Addr) *Service {
	v, _ := s.serviceByAddr.Get(a.Unmap())
	return v
}

// Endpoints returns the workloads behind a service that serve a service port, healthy ones only, in a
// stable order, with the port each listens on.
func (s *Snapshot) Endpoints(serviceKey string, port uint16) []ServiceEndpoint {
	keys, _ := s.endpoints.Get(serviceKey)
	out := make([]ServiceEndpoint, 0, len(keys))
	for _, k := range keys {
		w := s.Workload(k)
		if w == nil || !w.Healthy() || len(w.Addresses) == 0 {
			continue
		}
		for _, b := range w.Services {
			if b.Service != serviceKey {
				continue
			}
			if tp, ok := b.TargetPort(port); ok {
				out = append(out, ServiceEndpoint{Workload: w, Port: tp})
			}
		}
	}
	return out
}

// ServiceEndpoint is a workload and the port it serves a service port on.
type ServiceEndpoint struct {
	Workload *Workload
	Port     uint16
}

// NodeWorkloads returns the workloads scheduled on a node.
func (s *Snapshot) NodeWorkloads(node string) []*Workload {
	keys, _ := s.byNode.Get(node)
	out := make([]*Workload, 0, len(keys))
	for _, k := range keys {
		if w := s.Workload(k); w != nil {
			out = append(out, w)
		}
	}
	return out
}

// Policies is the compiled policy set.
func (s *Snapshot) Policies() *authz.Set { return s.policies }

// Counts returns how many workloads, services and policies the snapshot holds.
func (s *Snapshot) Counts() (workloads, services, policies int) {
	return s.workloads.Len(), s.services.Len(), s.policies.Len()
}

// Resources is a full set of resources, or the upserted part of a delta.
type Resources struct {
	Workloads []*api.Workload
	Services  []*api.Service
	Policies  []*api.Authorization
}

// Delta changes a snapshot: resources to add or replace, and keys of resources to remove.
type Delta struct {
	Upsert          Resources
	RemoveWorkloads []string
	RemoveServices  []string
	RemovePolicies  []string
}

// ResourceError is a resource that was refused, with the reason: the xDS client NACKs it.
type ResourceError struct {
	Type string // "Workload", "Service" or "Authorization"
	Key  string
	Err  error
}

func (e *ResourceError) Error() string { return fmt.Sprintf("%s %s: %v", e.Type, e.Key, e.Err) }
func (e *ResourceError) Unwrap() error { return e.Err }

// Store holds the current snapshot and applies changes to it.
type Store struct {
	mu      sync.Mutex // serializes writers; readers use current
	current atomic.Pointer[Snapshot]
	subs    []chan struct{}
}

// NewStore returns a store with an empty snapshot.
func NewStore(trustDomain string) *Store {
	seed := maphash.MakeSeed()
	s := &Store{}
	s.current.Store(&Snapshot{
		trustDomain:    trustDomain,
		workloads:      newCowMap[string, *Workload](seed),
		workloadByAddr: newCowMap[netip.Addr, *Workload](seed),
		services:       newCowMap[string, *Service](seed),
		serviceByAddr:  newCowMap[netip.Addr, *Service](seed),
		endpoints:      newCowMap[string, []string](seed),
		byNode:         newCowMap[string, []string](seed),
		policyProtos:   map[string]*api.Authorization{},
	})
	return s
}

// Load returns the current snapshot. It never blocks.
func (st *Store) Load() *Snapshot { return st.current.Load() }

// Subscribe returns a channel that receives a value after every new snapshot. Notifications coalesce: a
// slow reader sees the latest snapshot, not every one.
func (st *Store) Subscribe() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	ch := make(chan struct{}, 1)
	st.subs = append(st.subs, ch)
	return ch
}

// Apply applies a delta. Invalid resources are refused and returned as *ResourceError (joined); the valid
// rest is applied. The new snapshot is published only when something changed.
func (st *Store) Apply(d Delta) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	next, changed, err := apply(st.current.Load(), d)
	if changed {
		st.publish(next)
	}
	return err
}

// Replace makes the snapshot hold exactly the given resources (a reloaded config file). Like Apply it
// refuses invalid resources and keeps the rest.
func (st *Store) Replace(r Resources) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	cur := st.current.Load()
	d := Delta{Upsert: r}
	keep := map[string]bool{}
	for _, w := range r.Workloads {
		keep[key(w.GetNamespace(), w.GetName())] = true
	}
	cur.workloads.All(func(k string, _ *Workload) bool {
		if !keep[k] {
			d.RemoveWorkloads = append(d.RemoveWorkloads, k)
		}
		return true
	})
	keep = map[string]bool{}
	for _, s := range r.Services {
		keep[key(s.GetNamespace(), s.GetName())] = true
	}
	cur.services.All(func(k string, _ *Service) bool {
		if !keep[k] {
			d.RemoveServices = append(d.RemoveServices, k)
		}
		return true
	})
	keep = map[string]bool{}
	for _, p := range r.Policies {
		keep[key(p.GetNamespace(), p.GetName())] = true
	}
	for k := range cur.policyProtos {
		if !keep[k] {
			d.RemovePolicies = append(d.RemovePolicies, k)
		}
	}
	next, changed, err := apply(cur, d)
	if changed {
		st.publish(next)
	}
	return err
}

func (st *Store) publish(next *Snapshot) {
	st.current.Store(next)
	for _, ch := range st.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func key(namespace, name string) string { return namespace + "/" + name }

// resolve turns a reference relative to a namespace ("<name>" or "<namespace>/<name>") into a key.
func resolve(namespace, ref string) string {
	if ref == "" || strings.Contains(ref, "/") {
		return ref
	}
	return key(namespace, ref)
}

func apply(cur *Snapshot, d Delta) (*Snapshot, bool, error) {
	var errs []error
	next := *cur
	next.version = cur.version + 1
	changed := false

	wl, wlAddr, eps, nodes := cur.workloads.batch(), cur.workloadByAddr.batch(), cur.endpoints.batch(), cur.byNode.batch()
	removeWorkload := func(k string) {
		old, ok := wl.Get(k)
		if !ok {
			return
		}
		wl.Delete(k)
		for _, a := range old.Addresses {
			if w, ok := wlAddr.Get(a); ok && w.Key == k {
				wlAddr.Delete(a)
			}
		}
		for _, b := range old.Services {
			setRemove(eps, b.Service, k)
		}
		setRemove(nodes, old.Node(), k)
		changed = true
	}
	for _, k := range d.RemoveWorkloads {
		removeWorkload(k)
	}
	for _, p := range d.Upsert.Workloads {
		w, err := newWorkload(p, cur.trustDomain)
		if err != nil {
			errs = append(errs, &ResourceError{Type: "Workload", Key: key(p.GetNamespace(), p.GetName()), Err: err})
			continue
		}
		removeWorkload(w.Key)
		wl.Set(w.Key, w)
		for _, a := range w.Addresses {
			wlAddr.Set(a, w)
		}
		for _, b := range w.Services {
			setAdd(eps, b.Service, w.Key)
		}
		setAdd(nodes, w.Node(), w.Key)
		changed = true
	}
	next.workloads, next.workloadByAddr, next.endpoints, next.byNode = wl.done(), wlAddr.done(), eps.done(), nodes.done()

	svcs, svcAddr := cur.services.batch(), cur.serviceByAddr.batch()
	removeService := func(k string) {
		old, ok := svcs.Get(k)
		if !ok {
			return
		}
		svcs.Delete(k)
		for _, a := range old.Addresses {
			if s, ok := svcAddr.Get(a); ok && s.Key == k {
				svcAddr.Delete(a)
			}
		}
		changed = true
	}
	for _, k := range d.RemoveServices {
		removeService(k)
	}
	for _, p := range d.Upsert.Services {
		s, err := newService(p)
		if err != nil {
			errs = append(errs, &ResourceError{Type: "Service", Key: key(p.GetNamespace(), p.GetName()), Err: err})
			continue
		}
		removeService(s.Key)
		svcs.Set(s.Key, s)
		for _, a := range s.Addresses {
			svcAddr.Set(a, s)
		}
		changed = true
	}
	next.services, next.serviceByAddr = svcs.done(), svcAddr.done()

	if len(d.RemovePolicies) > 0 || len(d.Upsert.Policies) > 0 {
		protos := make(map[string]*api.Authorization, len(cur.policyProtos)+len(d.Upsert.Policies))
		for k, v := range cur.policyProtos {
			protos[k] = v
		}
		for _, k := range d.RemovePolicies {
			if _, ok := protos[k]; ok {
				delete(protos, k)
				changed = true
			}
		}
		compiled := map[string]*authz.Policy{}
		for _, p := range d.Upsert.Policies {
			k := key(p.GetNamespace(), p.GetName())
			c, err := authz.Compile(p)
			if err != nil {
				errs = append(errs, &ResourceError{Type: "Authorization", Key: k, Err: err})
				continue
			}
			protos[k] = p
			compiled[k] = c
			changed = true
		}
		next.policyProtos = protos
		next.policies = rebuildPolicies(cur.policies, protos, compiled)
	}
	return &next, changed, errors.Join(errs...)
}

// rebuildPolicies makes a new Set, reusing the compiled policies of the old one that did not change, so
// that authz.SamePolicies lets the proxy skip re-checking connections whose policies are the same.
func rebuildPolicies(old *authz.Set, protos map[string]*api.Authorization, fresh map[string]*authz.Policy) *authz.Set {
	keys := make([]string, 0, len(protos))
	for k := range protos {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*authz.Policy, 0, len(keys))
	for _, k := range keys {
		if p, ok := fresh[k]; ok {
			out = append(out, p)
			continue
		}
		if p := old.Get(k); p != nil {
			out = append(out, p)
		}
	}
	return authz.NewSet(out)
}

// setAdd and setRemove keep a sorted list of keys under a map key, copying the list (it may be shared
// with older snapshots).
func setAdd(b *batch[string, []string], k, member string) {
	cur, _ := b.Get(k)
	i, found := slices.BinarySearch(cur, member)
	if found {
		return
	}
	next := make([]string, 0, len(cur)+1)
	next = append(next, cur[:i]...)
	next = append(next, member)
	next = append(next, cur[i:]...)
	b.Set(k, next)
}

func setRemove(b *batch[string, []string], k, member string) {
	cur, _ := b.Get(k)
	i, found := slices.BinarySearch(cur, member)
	if !found {
		return
	}
	if len(cur) == 1 {
		b.Delete(k)
		return
	}
	next := make([]string, 0, len(cur)-1)
	next = append(next, cur[:i]...)
	next = append(next, cur[i+1:]...)
	b.Set(k, next)
}

func parseAddrs(raw [][]byte) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(raw))
	for i, b := range raw {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("addresses[%d]: %d bytes, want 4 (IPv4) or 16 (IPv6)", i, len(b))
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func validName(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if strings.Contains(v, "/") {
		return fmt.Errorf("%s %q contains '/'", field, v)
	}
	return nil
}

func newWorkload(p *api.Workload, trustDomain string) (*Workload, error) {
	if err := errors.Join(validName("name", p.GetName()), validName("namespace", p.GetNamespace())); err != nil {
		return nil, err
	}
	addrs, err := parseAddrs(p.GetAddresses())
	if err != nil {
		return nil, err
	}
	td := cmp.Or(p.GetTrustDomain(), trustDomain)
	w := &Workload{
		Proto:     p,
		Key:       key(p.GetNamespace(), p.GetName()),
		Addresses: addrs,
		Identity:  identity.New(td, p.GetNamespace(), p.GetServiceAccount()),
		Waypoint:  resolve(p.GetNamespace(), p.GetWaypoint()),
	}
	for i, b := range p.GetServices() {
		if b.GetService() == "" {
			return nil, fmt.Errorf("services[%d].service is empty", i)
		}
		for j, pm := range b.GetPorts() {
			if pm.GetServicePort() == 0 || pm.GetServicePort() > 65535 || pm.GetTargetPort() > 65535 {
				return nil, fmt.Errorf("services[%d].ports[%d]: ports must be 1-65535 (target 0 means the service port)", i, j)
			}
		}
		w.Services = append(w.Services, ServiceBinding{Service: resolve(p.GetNamespace(), b.GetService()), Ports: b.GetPorts()})
	}
	for _, ref := range p.GetAuthorizationPolicies() {
		w.Policies = append(w.Policies, resolve(p.GetNamespace(), ref))
	}
	return w, nil
}

func newService(p *api.Service) (*Service, error) {
	if err := errors.Join(validName("name", p.GetName()), validName("namespace", p.GetNamespace())); err != nil {
		return nil, err
	}
	addrs, err := parseAddrs(p.GetAddresses())
	if err != nil {
		return nil, err
	}
	for i, port := range p.GetPorts() {
		if port.GetPort() == 0 || port.GetPort() > 65535 || port.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("ports[%d]: ports must be 1-65535 (target 0 means the service port)", i)
		}
	}
	s := &Service{Proto: p, Key: key(p.GetNamespace(), p.GetName()), Addresses: addrs, Waypoint: resolve(p.GetNamespace(), p.GetWaypoint())}
	for _, ref := range p.GetAuthorizationPolicies() {
		s.Policies = append(s.Policies, resolve(p.GetNamespace(), ref))
	}
	return s, nil
}
