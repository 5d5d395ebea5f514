package xds

import (
	"context"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Default debounce of Kubernetes changes.
const (
	DefaultDebounce = 50 * time.Millisecond
	DefaultMaxDelay = 500 * time.Millisecond
)

// Names of the cache indexes the translation looks things up by.
const (
	// indexPod: EndpointSlices by the keys of the pods their endpoints point to.
	indexPod = "pod"
	// indexService: EndpointSlices by "<namespace>/<service>".
	indexService = "service"
	// indexUseWaypoint: Pods and Services by "<namespace>/<waypoint>" of their use-waypoint labels.
	indexUseWaypoint = "useWaypoint"
)

// Sink receives the translator's changes; *Server is one.
type Sink interface {
	Apply(changes []Change)
}

// sources are the caches the translation reads. The three CRD-backed caches are nil while their CRD is
// not installed.
type sources struct {
	pods, services, slices, namespaces cache.Indexer
	waypoints, gateways, policies      func() cache.Indexer
}

// What can be dirty, in the order a batch handles them: each step may mark later steps dirty.
const (
	kindNamespace = iota
	kindWaypoint
	kindPolicy
	kindService
	kindPod
	numKinds
)

// core is the translation: dirty keys go in (from informer handlers, any goroutine), changes come out
// (from the one worker goroutine, which alone owns the state below mu).
type core struct {
	root     string
	enroll   enrollment
	log      logr.Logger
	metrics  *Metrics
	sink     Sink
	debounce time.Duration
	maxDelay time.Duration
	src      sources

	mu    sync.Mutex
	dirty [numKinds]map[string]struct{}
	wake  chan struct{}

	built atomic.Bool

	// Owned by the worker.
	waypoints map[string]waypointInfo
	services  map[string]*svcState
	policies  map[string]*policyState
	// selectorPolicies: namespace -> policy key -> policy, for policies with a WORKLOAD_SELECTOR resource.
	selectorPolicies map[string]map[string]*policyState
	// servicePolicies: service key -> policy key -> the name of the SERVICE resource that lists it.
	servicePolicies map[string]map[string]string
}

type svcState struct {
	waypoint string // key of the waypoint's Service, or ""
	ports    string // signature of the ports, to notice when endpoints' mappings change
}

type policyState struct {
	key, namespace, rv string
	tr                 TranslatedPolicy
	selector           labels.Selector
}

func newCore(src sources, root string, enroll enrollment, sink Sink, log logr.Logger, m *Metrics, debounce, maxDelay time.Duration) *core {
	c := &core{
		root: root, enroll: enroll, log: log, metrics: m, sink: sink, debounce: debounce, maxDelay: maxDelay, src: src,
		wake:             make(chan struct{}, 1),
		waypoints:        map[string]waypointInfo{},
		services:         map[string]*svcState{},
		policies:         map[string]*policyState{},
		selectorPolicies: map[string]map[string]*policyState{},
		servicePolicies:  map[string]map[string]string{},
	}
	for i := range c.dirty {
		c.dirty[i] = map[string]struct{}{}
	}
	return c
}

// mark records that an object changed. It is cheap and never blocks.
func (c *core) mark(kind int, key string) {
	c.mu.Lock()
	c.dirty[kind][key] = struct{}{}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *core) take() [numKinds]map[string]struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dirty
	for i := range c.dirty {
		c.dirty[i] = map[string]struct{}{}
	}
	return d
}

// buildAll translates everything in the caches, once they are synced.
func (c *core) buildAll() {
	d := c.take()
	for _, idx := range []cache.Indexer{c.src.waypoints(), c.src.gateways()} {
		if idx != nil {
			for _, k := range idx.ListKeys() {
				d[kindWaypoint][k] = struct{}{}
			}
		}
	}
	if idx := c.src.policies(); idx != nil {
		for _, k := range idx.ListKeys() {
			d[kindPolicy][k] = struct{}{}
		}
	}
	for _, k := range c.src.services.ListKeys() {
		d[kindService][k] = struct{}{}
	}
	for _, k := range c.src.pods.ListKeys() {
		d[kindPod][k] = struct{}{}
	}
	c.flush(d)
	c.built.Store(true)
}

// run handles dirty keys until ctx ends: after a change it waits for a quiet period (debounce), but never
// longer than maxDelay after the first change of a burst.
func (c *core) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		}
		start := time.Now()
		timer.Reset(c.debounce)
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-c.wake:
				left := c.maxDelay - time.Since(start)
				if left <= 0 {
					timer.Stop()
					break wait
				}
				timer.Reset(min(c.debounce, left))
			case <-timer.C:
				break wait
			}
		}
		c.flush(c.take())
	}
}

func (c *core) flush(d [numKinds]map[string]struct{}) {
	start := time.Now()
	changes := c.process(d)
	c.metrics.batch(time.Since(start).Seconds())
	if len(changes) > 0 {
		c.sink.Apply(changes)
	}
}

// batch is one pass over the dirty keys.
type batch struct {
	c            *core
	d            [numKinds]map[string]struct{}
	emitPolicies map[string]struct{}
	changes      []Change
}

// allKeys, marked dirty, means every object of the kind that the translation knows.
const allKeys = "*"

func expandAll[V any](dirty map[string]struct{}, known map[string]V) {
	if _, ok := dirty[allKeys]; !ok {
		return
	}
	delete(dirty, allKeys)
	for k := range known {
		dirty[k] = struct{}{}
	}
}

// parallelPods is the number of dirty pods from which a batch translates pods on every CPU.
const parallelPods = 2048

func (c *core) process(d [numKinds]map[string]struct{}) []Change {
	b := &batch{c: c, d: d, emitPolicies: map[string]struct{}{}}
	b.changes = make([]Change, 0, len(d[kindService])+len(d[kindPod])+2*len(d[kindPolicy]))
	for ns := range d[kindNamespace] {
		b.markNamespace(ns)
	}
	expandAll(d[kindWaypoint], c.waypoints)
	expandAll(d[kindPolicy], c.policies)
	for k := range d[kindWaypoint] {
		b.waypoint(k)
	}
	for k := range d[kindPolicy] {
		b.policy(k)
	}
	for k := range d[kindService] {
		b.service(k)
	}
	b.pods(d[kindPod])
	for k := range b.emitPolicies {
		b.emitPolicy(k)
	}
	return b.changes
}

// pods translates the dirty pods. Translating a pod only reads the state the earlier steps updated, so
// a large batch (the initial build, a namespace relabel) is spread over every CPU.
func (b *batch) pods(dirty map[string]struct{}) {
	workers := runtime.GOMAXPROCS(0)
	if len(dirty) < parallelPods || workers < 2 {
		for k := range dirty {
			b.pod(k)
		}
		return
	}
	keys := make([]string, 0, len(dirty))
	for k := range dirty {
		keys = append(keys, k)
	}
	parts := make([][]Change, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			sub := &batch{c: b.c, changes: make([]Change, 0, len(keys)/workers+1)}
			for i := w; i < len(keys); i += workers {
				sub.pod(keys[i])
			}
			parts[w] = sub.changes
		})
	}
	wg.Wait()
	for _, p := range parts {
		b.changes = append(b.changes, p...)
	}
}

func (b *batch) mark(kind int, key string) { b.d[kind][key] = struct{}{} }

func (b *batch) markNamespace(ns string) {
	for _, o := range byIndex(b.c.src.pods, cache.NamespaceIndex, ns) {
		b.mark(kindPod, ns+"/"+o.(*corev1.Pod).Name)
	}
	for _, o := range byIndex(b.c.src.services, cache.NamespaceIndex, ns) {
		b.mark(kindService, ns+"/"+o.(*corev1.Service).Name)
	}
}

func byIndex(idx cache.Indexer, name, value string) []any {
	if idx == nil {
		return nil
	}
	out, _ := idx.ByIndex(name, value)
	return out
}

func getByKey[T any](idx cache.Indexer, key string) T {
	var zero T
	if idx == nil {
		return zero
	}
	o, ok, _ := idx.GetByKey(key)
	if !ok {
		return zero
	}
	v, _ := o.(T)
	return v
}

func splitKey(key string) (string, string) {
	ns, name, _ := strings.Cut(key, "/")
	return ns, name
}

// waypoint refreshes what is known of a waypoint (a Waypoint, else a Gateway of the waypoint class) and,
// when that changed, marks the pods and services that name it.
func (b *batch) waypoint(key string) {
	c := b.c
	var w waypointInfo
	found := false
	if u := getByKey[*unstructured.Unstructured](c.src.waypoints(), key); u != nil {
		w, found = waypointFromWaypoint(u), true
	} else if u := getByKey[*unstructured.Unstructured](c.src.gateways(), key); u != nil {
		w, found = waypointFromGateway(u)
	}
	old, had := c.waypoints[key]
	if found == had && old == w {
		return
	}
	if found {
		c.waypoints[key] = w
	} else {
		delete(c.waypoints, key)
	}
	ns, name := splitKey(key)
	if n := getByKey[*corev1.Namespace](c.src.namespaces, ns); n != nil {
		if v, _ := useWaypoint(n.Labels, c.enroll.acceptIstio); v == name {
			b.markNamespace(ns)
			return
		}
	}
	for _, o := range byIndex(c.src.pods, indexUseWaypoint, key) {
		b.mark(kindPod, ns+"/"+o.(*corev1.Pod).Name)
	}
	for _, o := range byIndex(c.src.services, indexUseWaypoint, key) {
		b.mark(kindService, ns+"/"+o.(*corev1.Service).Name)
	}
}

// policy re-translates a changed AuthorizationPolicy, updates the indexes of selector and service
// policies, and marks the pods and services whose lists of policies change.
func (b *batch) policy(key string) {
	c := b.c
	ns, name := splitKey(key)
	old := c.policies[key]
	u := getByKey[*unstructured.Unstructured](c.src.policies(), key)
	if u == nil {
		if old == nil {
			return
		}
		b.unindexPolicy(old)
		b.markPolicyTargets(old)
		for _, r := range old.tr.Resources {
			b.remove(api.AuthorizationType, ns+"/"+r.GetName())
		}
		delete(c.policies, key)
		return
	}
	if old != nil && old.rv == u.GetResourceVersion() {
		return
	}
	spec, _ := u.Object["spec"].(map[string]any)
	st := &policyState{key: key, namespace: ns, rv: u.GetResourceVersion(), tr: TranslatePolicy(ns, name, spec, c.root)}
	if st.tr.Selector != nil {
		st.selector = labels.SelectorFromSet(st.tr.Selector)
	}
	for _, is := range st.tr.Issues {
		c.metrics.policyIssue(is.Reason)
		c.log.Info("AuthorizationPolicy is not fully enforceable at L4; translated to deny rather than allow more",
			"policy", key, "field", is.Field, "reason", is.Reason, "detail", is.Message)
	}
	if old == nil || !maps.Equal(old.tr.Selector, st.tr.Selector) || old.tr.SelectorResource != st.tr.SelectorResource ||
		!slices.Equal(old.tr.Services, st.tr.Services) || old.tr.ServiceResource != st.tr.ServiceResource {
		b.markPolicyTargets(old)
		b.markPolicyTargets(st)
	}
	if old != nil {
		b.unindexPolicy(old)
		for _, r := range old.tr.Resources {
			if !slices.ContainsFunc(st.tr.Resources, func(n *api.Authorization) bool { return n.GetName() == r.GetName() }) {
				b.remove(api.AuthorizationType, ns+"/"+r.GetName())
			}
		}
	}
	b.indexPolicy(st)
	c.policies[key] = st
	b.emitPolicies[key] = struct{}{}
}

func (b *batch) indexPolicy(st *policyState) {
	c := b.c
	if st.selector != nil {
		m := c.selectorPolicies[st.namespace]
		if m == nil {
			m = map[string]*policyState{}
			c.selectorPolicies[st.namespace] = m
		}
		m[st.key] = st
	}
	for _, s := range st.tr.Services {
		sk := st.namespace + "/" + s
		m := c.servicePolicies[sk]
		if m == nil {
			m = map[string]string{}
			c.servicePolicies[sk] = m
		}
		m[st.key] = st.tr.ServiceResource
	}
}

func (b *batch) unindexPolicy(st *policyState) {
	c := b.c
	if m := c.selectorPolicies[st.namespace]; m != nil {
		delete(m, st.key)
		if len(m) == 0 {
			delete(c.selectorPolicies, st.namespace)
		}
	}
	for _, s := range st.tr.Services {
		sk := st.namespace + "/" + s
		if m := c.servicePolicies[sk]; m != nil {
			delete(m, st.key)
			if len(m) == 0 {
				delete(c.servicePolicies, sk)
			}
		}
	}
}

// markPolicyTargets marks the pods a policy selects and the services it targets.
func (b *batch) markPolicyTargets(st *policyState) {
	if st == nil {
		return
	}
	c := b.c
	for _, s := range st.tr.Services {
		b.mark(kindService, st.namespace+"/"+s)
	}
	if st.selector == nil {
		return
	}
	var pods []any
	if st.namespace == c.root {
		pods = c.src.pods.List()
	} else {
		pods = byIndex(c.src.pods, cache.NamespaceIndex, st.namespace)
	}
	for _, o := range pods {
		p := o.(*corev1.Pod)
		if st.selector.Matches(labels.Set(p.Labels)) {
			b.mark(kindPod, p.Namespace+"/"+p.Name)
		}
	}
}

// emitPolicy sends the resources of a policy with their audience: node proxies for the node-proxy
// scopes, the waypoints of the targeted services for SERVICE, the targeted waypoint for WAYPOINT.
func (b *batch) emitPolicy(key string) {
	c := b.c
	st := c.policies[key]
	if st == nil {
		return
	}
	for _, r := range st.tr.Resources {
		var wps []string
		nodes := false
		switch r.GetScope() {
		case api.Scope_SERVICE:
			for _, s := range st.tr.Services {
				if ss := c.services[st.namespace+"/"+s]; ss != nil && ss.waypoint != "" {
					wps = append(wps, ss.waypoint)
				}
			}
		case api.Scope_WAYPOINT:
			wps = []string{st.namespace + "/" + r.GetWaypoint()}
		default:
			nodes = true
		}
		b.changes = append(b.changes, Change{TypeURL: api.AuthorizationType, Name: st.namespace + "/" + r.GetName(), Resource: r, Nodes: nodes, Waypoints: wps})
	}
}

func (b *batch) remove(typeURL, name string) {
	b.changes = append(b.changes, Change{TypeURL: typeURL, Name: name})
}

// waypointFor resolves the waypoint that labels (or, when they say nothing, the namespace's labels) ask
// for, if it exists and handles the kind of traffic (workloads or services). It returns the key of the
// waypoint's Service, or "".
func (b *batch) waypointFor(ns string, l map[string]string, workload bool, serviceAccount string) string {
	c := b.c
	if l[LabelWaypoint] != "" {
		return "" // a waypoint's own pods and Service do not go through a waypoint
	}
	name, set := useWaypoint(l, c.enroll.acceptIstio)
	if !set {
		if n := getByKey[*corev1.Namespace](c.src.namespaces, ns); n != nil {
			name, _ = useWaypoint(n.Labels, c.enroll.acceptIstio)
		}
	}
	if name == "" {
		return ""
	}
	key := ns + "/" + name
	w, ok := c.waypoints[key]
	switch {
	case !ok:
		return ""
	case workload && (!w.forWorkloads || (w.serviceAccount != "" && w.serviceAccount != serviceAccount)):
		return ""
	case !workload && !w.forServices:
		return ""
	}
	return key
}

// service translates a Service.
func (b *batch) service(key string) {
	c := b.c
	old := c.services[key]
	svc := getByKey[*corev1.Service](c.src.services, key)
	var addrs [][]byte
	if svc != nil {
		addrs = serviceAddresses(svc)
	}
	if len(addrs) == 0 {
		if old != nil {
			delete(c.services, key)
			b.remove(api.ServiceType, key)
			b.markEndpoints(key)
			b.markServicePolicies(key)
		}
		return
	}
	wp := b.waypointFor(svc.Namespace, svc.Labels, false, "")
	st := &svcState{waypoint: wp, ports: portsSignature(svc)}
	res := &api.Service{
		Name: svc.Name, Namespace: svc.Namespace, Addresses: addrs, Ports: servicePorts(svc),
		Waypoint: relative(svc.Namespace, wp), AuthorizationPolicies: sortedValues(c.servicePolicies[key]),
	}
	if old == nil || old.ports != st.ports || old.waypoint != wp {
		b.markEndpoints(key)
	}
	if old == nil || old.waypoint != wp {
		b.markServicePolicies(key)
	}
	c.services[key] = st
	var wps []string
	if wp != "" {
		wps = []string{wp}
	}
	b.changes = append(b.changes, Change{TypeURL: api.ServiceType, Name: key, Resource: res, Nodes: true, Waypoints: wps})
}

func portsSignature(svc *corev1.Service) string {
	var sb strings.Builder
	for _, p := range svc.Spec.Ports {
		sb.WriteString(p.Name)
		sb.WriteByte(':')
		sb.WriteString(string(p.Protocol))
		sb.WriteByte(':')
		sb.WriteString(p.TargetPort.String())
		sb.WriteByte(':')
		sb.WriteString(strconv.Itoa(int(p.Port)))
		sb.WriteByte(';')
	}
	return sb.String()
}

func sortedValues(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	out := slices.Collect(maps.Values(m))
	slices.Sort(out)
	return slices.Compact(out)
}

// relative writes a key in namespace ns as a reference from ns: "<name>" when in ns.
func relative(ns, key string) string {
	if rest, ok := strings.CutPrefix(key, ns+"/"); ok {
		return rest
	}
	return key
}

func (b *batch) markEndpoints(svcKey string) {
	for _, o := range byIndex(b.c.src.slices, indexService, svcKey) {
		for _, p := range slicePods(o.(*discoveryv1.EndpointSlice)) {
			b.mark(kindPod, p)
		}
	}
}

func (b *batch) markServicePolicies(svcKey string) {
	for pk := range b.c.servicePolicies[svcKey] {
		b.emitPolicies[pk] = struct{}{}
	}
}

// pod translates a Pod into a Workload.
func (b *batch) pod(key string) {
	c := b.c
	pod := getByKey[*corev1.Pod](c.src.pods, key)
	if pod == nil || !usable(pod) {
		b.remove(api.WorkloadType, key)
		return
	}
	ns := getByKey[*corev1.Namespace](c.src.namespaces, pod.Namespace)
	sa := pod.Spec.ServiceAccountName
	if sa == "default" {
		sa = ""
	}
	w := &api.Workload{
		Name: pod.Name, Namespace: pod.Namespace, Addresses: podAddresses(pod), Node: pod.Spec.NodeName, ServiceAccount: sa,
		CanonicalName:     firstLabel(pod.Labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app"),
		CanonicalRevision: firstLabel(pod.Labels, "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"),
	}
	if !podReady(pod) {
		w.Status = api.WorkloadStatus_UNHEALTHY
	}
	if pod.Labels[LabelWaypoint] != "" {
		w.NativeHbone = true
	} else if !c.enroll.enrolled(ns, pod) {
		w.Tunnel = api.TunnelProtocol_NONE
	}
	var wps []string
	if wp := b.waypointFor(pod.Namespace, pod.Labels, true, pod.Spec.ServiceAccountName); wp != "" {
		w.Waypoint = relative(pod.Namespace, wp)
		wps = append(wps, wp)
	}
	w.Services, wps = b.bindings(key, pod.Namespace, wps)
	w.AuthorizationPolicies = b.selectedBy(pod)
	slices.Sort(wps)
	b.changes = append(b.changes, Change{TypeURL: api.WorkloadType, Name: key, Resource: w, Nodes: true, Waypoints: slices.Compact(wps)})
}

// bindings are the services whose EndpointSlices point to the pod, with the pod's port for each service
// port; the waypoints of those services are appended to wps.
func (b *batch) bindings(podKey, ns string, wps []string) ([]*api.ServiceBinding, []string) {
	c := b.c
	slicesOf := byIndex(c.src.slices, indexPod, podKey)
	if len(slicesOf) == 0 {
		return nil, wps
	}
	var out []*api.ServiceBinding
	for _, o := range slicesOf {
		es := o.(*discoveryv1.EndpointSlice)
		name := es.Labels[labelSvcName]
		skey := ns + "/" + name
		st := c.services[skey]
		if name == "" || st == nil {
			continue // no such service, or one without a virtual address
		}
		svc := getByKey[*corev1.Service](c.src.services, skey)
		if svc == nil {
			continue
		}
		pms := slicePortMappings(es, svc)
		if len(pms) == 0 {
			continue
		}
		i := slices.IndexFunc(out, func(sb *api.ServiceBinding) bool { return sb.GetService() == name })
		if i < 0 {
			out = append(out, &api.ServiceBinding{Service: name})
			i = len(out) - 1
			if st.waypoint != "" {
				wps = append(wps, st.waypoint)
			}
		}
		for _, pm := range pms {
			if !slices.ContainsFunc(out[i].Ports, func(x *api.PortMapping) bool { return x.GetServicePort() == pm.GetServicePort() }) {
				out[i].Ports = append(out[i].Ports, pm)
			}
		}
	}
	slices.SortFunc(out, func(a, b *api.ServiceBinding) int { return strings.Compare(a.GetService(), b.GetService()) })
	for _, sb := range out {
		slices.SortFunc(sb.Ports, func(a, b *api.PortMapping) int { return int(a.GetServicePort()) - int(b.GetServicePort()) })
	}
	return out, wps
}

// selectedBy lists the WORKLOAD_SELECTOR policies that select a pod: those of its namespace, and those of
// the mesh's root namespace, which apply to every namespace.
func (b *batch) selectedBy(pod *corev1.Pod) []string {
	c := b.c
	var out []string
	set := labels.Set(pod.Labels)
	for _, st := range c.selectorPolicies[pod.Namespace] {
		if st.selector.Matches(set) {
			out = append(out, st.tr.SelectorResource)
		}
	}
	if pod.Namespace != c.root {
		for _, st := range c.selectorPolicies[c.root] {
			if st.selector.Matches(set) {
				out = append(out, c.root+"/"+st.tr.SelectorResource)
			}
		}
	}
	slices.Sort(out)
	return out
}
