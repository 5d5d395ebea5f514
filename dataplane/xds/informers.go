package xds

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The custom resources the translation reads, each watched only while its CRD is installed.
var (
	gvrWaypoints = schema.GroupVersionResource{Group: "ambient.dev", Version: "v1alpha1", Resource: "waypoints"}
	gvrGateways  = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	gvrPolicies  = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	gvrCRDs      = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// TranslatorOptions configure a Translator.
type TranslatorOptions struct {
	// Client and Dynamic read the cluster. Required.
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// MeshNamespace is the mesh's root namespace: its AuthorizationPolicies apply mesh-wide. Required.
	MeshNamespace string
	// NamespaceSelector and PodSelector enroll namespaces and pods; nil means DefaultEnrollmentSelector.
	NamespaceSelector, PodSelector labels.Selector
	// AcceptIstioLabels also honours istio.io/dataplane-mode=ambient and istio.io/use-waypoint.
	AcceptIstioLabels bool
	// Debounce is the quiet period after a change before it is translated (default DefaultDebounce);
	// MaxDelay bounds the wait during a continuous burst (default DefaultMaxDelay).
	Debounce, MaxDelay time.Duration
	// Sink receives the changes, normally the Server. Required.
	Sink Sink
	// Logger logs policy translation issues and informer lifecycle.
	Logger logr.Logger
	// Metrics records translation metrics; nil records nothing.
	Metrics *Metrics
}

// Translator watches the cluster through shared informers and feeds the compact resources to a Sink.
// Informers for Waypoints, Gateways and AuthorizationPolicies run only while their CRD is installed: the
// Translator watches CRDs and starts (or stops) them as CRDs appear (or go).
type Translator struct {
	core    *core
	log     logr.Logger
	factory informers.SharedInformerFactory
	crds    cache.SharedIndexInformer
	lazy    []*lazyInformer
	synced  []cache.InformerSynced
	crdsReg cache.ResourceEventHandlerRegistration
}

// NewTranslator sets up the informers; Run starts them.
func NewTranslator(opts TranslatorOptions) (*Translator, error) {
	switch {
	case opts.Client == nil || opts.Dynamic == nil:
		return nil, errors.New("xds: TranslatorOptions.Client and Dynamic are required")
	case opts.MeshNamespace == "":
		return nil, errors.New("xds: TranslatorOptions.MeshNamespace is required")
	case opts.Sink == nil:
		return nil, errors.New("xds: TranslatorOptions.Sink is required")
	}
	def, err := labels.Parse(DefaultEnrollmentSelector)
	if err != nil {
		return nil, err
	}
	enroll := enrollment{namespaces: opts.NamespaceSelector, pods: opts.PodSelector, acceptIstio: opts.AcceptIstioLabels}
	if enroll.namespaces == nil {
		enroll.namespaces = def
	}
	if enroll.pods == nil {
		enroll.pods = def
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	log := opts.Logger.WithName("translator")

	f := informers.NewSharedInformerFactoryWithOptions(opts.Client, 0, informers.WithTransform(stripMeta))
	pods := f.Core().V1().Pods().Informer()
	services := f.Core().V1().Services().Informer()
	slicesInf := f.Discovery().V1().EndpointSlices().Informer()
	namespaces := f.Core().V1().Namespaces().Informer()
	if err := pods.SetTransform(stripPod); err != nil {
		return nil, err
	}
	for _, e := range []error{
		pods.AddIndexers(cache.Indexers{indexUseWaypoint: useWaypointIndex}),
		services.AddIndexers(cache.Indexers{indexUseWaypoint: useWaypointIndex}),
		slicesInf.AddIndexers(cache.Indexers{indexPod: slicePodIndex, indexService: sliceServiceIndex}),
	} {
		if e != nil {
			return nil, fmt.Errorf("xds: add indexers: %w", e)
		}
	}

	t := &Translator{factory: f, log: log}
	mkLazy := func(gvr schema.GroupVersionResource, kind int) *lazyInformer {
		l := &lazyInformer{gvr: gvr, client: opts.Dynamic, log: log, mark: func(k string) { t.core.mark(kind, k) }}
		t.lazy = append(t.lazy, l)
		return l
	}
	wps, gws, pols := mkLazy(gvrWaypoints, kindWaypoint), mkLazy(gvrGateways, kindWaypoint), mkLazy(gvrPolicies, kindPolicy)
	src := sources{
		pods: pods.GetIndexer(), services: services.GetIndexer(), slices: slicesInf.GetIndexer(), namespaces: namespaces.GetIndexer(),
		waypoints: wps.indexer, gateways: gws.indexer, policies: pols.indexer,
	}
	t.core = newCore(src, opts.MeshNamespace, enroll, opts.Sink, log, opts.Metrics, opts.Debounce, opts.MaxDelay)
	c := t.core

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{pods, keyHandler(func(k string) { c.mark(kindPod, k) })},
		{services, keyHandler(func(k string) { c.mark(kindService, k) })},
		{slicesInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { markSlicePods(c, o) },
			UpdateFunc: func(o, n any) { markSlicePods(c, o); markSlicePods(c, n) },
			DeleteFunc: func(o any) { markSlicePods(c, o) },
		}},
		{namespaces, cache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) { markNamespace(c, o) },
			UpdateFunc: func(o, n any) {
				on, ok1 := o.(*corev1.Namespace)
				nn, ok2 := n.(*corev1.Namespace)
				if !ok1 || !ok2 || enroll.namespaceSignature(on) != enroll.namespaceSignature(nn) {
					markNamespace(c, n)
				}
			},
			DeleteFunc: func(o any) { markNamespace(c, o) },
		}},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return nil, fmt.Errorf("xds: add event handler: %w", err)
		}
		t.synced = append(t.synced, h.inf.HasSynced)
	}

	t.crds = dynamicinformer.NewFilteredDynamicInformer(opts.Dynamic, gvrCRDs, "", 0, cache.Indexers{}, nil).Informer()
	if err := t.crds.SetTransform(stripCRD); err != nil {
		return nil, err
	}
	onCRD := func(o any) {
		if u := unstructuredOf(o); u != nil {
			for _, l := range t.lazy {
				if u.GetName() == l.gvr.GroupResource().String() {
					l.update(u)
				}
			}
		}
	}
	if t.crdsReg, err = t.crds.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onCRD,
		UpdateFunc: func(_, n any) { onCRD(n) },
		DeleteFunc: func(o any) {
			if u := unstructuredOf(o); u != nil {
				for _, l := range t.lazy {
					if u.GetName() == l.gvr.GroupResource().String() {
						l.stop()
					}
				}
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("xds: add event handler: %w", err)
	}
	return t, nil
}

// Run starts the informers, builds the full state once they are synced, then translates changes until
// ctx ends. It returns after every goroutine it started has stopped.
func (t *Translator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer func() {
		for _, l := range t.lazy {
			l.stop()
		}
	}()
	for _, l := range t.lazy {
		l.ctx = ctx
	}
	t.factory.Start(ctx.Done())
	defer t.factory.Shutdown()
	wg.Go(func() { t.crds.RunWithContext(ctx) })
	// The CRD handler's registration has synced once it has seen every CRD, so that the informers of the
	// CRDs installed now have been started.
	if !cache.WaitForCacheSync(ctx.Done(), append(t.synced, t.crdsReg.HasSynced)...) {
		return fmt.Errorf("xds: informer caches did not sync: %w", ctx.Err())
	}
	// CRDs known at start have started their informers from the CRD handler; wait for those too.
	if !cache.WaitForCacheSync(ctx.Done(), func() bool {
		for _, l := range t.lazy {
			if !l.hasSynced() {
				return false
			}
		}
		return true
	}) {
		return fmt.Errorf("xds: informer caches did not sync: %w", ctx.Err())
	}
	start := time.Now()
	t.core.buildAll()
	w, s, p := len(t.core.src.pods.ListKeys()), len(t.core.services), len(t.core.policies)
	t.log.Info("Built the mesh state", "pods", w, "services", s, "policies", p, "duration", time.Since(start).String())
	t.core.run(ctx)
	return nil
}

// Ready reports whether the informers have synced and the full state was built and handed to the Sink.
func (t *Translator) Ready() bool { return t.core.built.Load() }

// keyHandler marks the namespace/name key of every added, updated or deleted object.
func keyHandler(mark func(string)) cache.ResourceEventHandler {
	f := func(o any) {
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
			mark(k)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: f, DeleteFunc: f, UpdateFunc: func(o, n any) {
		if om, ok := o.(interface{ GetResourceVersion() string }); ok {
			if nm, ok := n.(interface{ GetResourceVersion() string }); ok && om.GetResourceVersion() == nm.GetResourceVersion() {
				return
			}
		}
		f(n)
	}}
}

func tombstone(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

func unstructuredOf(o any) *unstructured.Unstructured {
	u, _ := tombstone(o).(*unstructured.Unstructured)
	return u
}

func markSlicePods(c *core, o any) {
	if es, ok := tombstone(o).(*discoveryv1.EndpointSlice); ok {
		for _, p := range slicePods(es) {
			c.mark(kindPod, p)
		}
	}
}

func markNamespace(c *core, o any) {
	if ns, ok := tombstone(o).(*corev1.Namespace); ok {
		c.mark(kindNamespace, ns.Name)
	}
}

func useWaypointIndex(o any) ([]string, error) {
	m, ok := o.(interface {
		GetNamespace() string
		GetLabels() map[string]string
	})
	if !ok {
		return nil, nil
	}
	var out []string
	for _, k := range []string{LabelUseWaypoint, LabelIstioUseWaypoint} {
		if v := m.GetLabels()[k]; v != "" {
			out = append(out, m.GetNamespace()+"/"+v)
		}
	}
	return out, nil
}

func slicePodIndex(o any) ([]string, error) {
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	return slicePods(es), nil
}

func sliceServiceIndex(o any) ([]string, error) {
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[labelSvcName] == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + es.Labels[labelSvcName]}, nil
}

// stripCRD keeps a CRD's name, served versions and conditions: CRD schemas are large and never read.
func stripCRD(o any) (any, error) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return o, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{}}
	out.SetAPIVersion(u.GetAPIVersion())
	out.SetKind(u.GetKind())
	out.SetName(u.GetName())
	out.SetResourceVersion(u.GetResourceVersion())
	out.SetUID(u.GetUID())
	var versions []any
	vs, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	for _, v := range vs {
		if m, ok := v.(map[string]any); ok {
			versions = append(versions, map[string]any{"name": m["name"], "served": m["served"]})
		}
	}
	_ = unstructured.SetNestedSlice(out.Object, versions, "spec", "versions")
	if conds, ok, _ := unstructured.NestedSlice(u.Object, "status", "conditions"); ok {
		_ = unstructured.SetNestedSlice(out.Object, conds, "status", "conditions")
	}
	return out, nil
}

// crdServes reports whether a CRD is established and serves a version.
func crdServes(u *unstructured.Unstructured, version string) bool {
	established := false
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			established = true
		}
	}
	if !established {
		return false
	}
	vs, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	for _, v := range vs {
		if m, ok := v.(map[string]any); ok && m["name"] == version && m["served"] == true {
			return true
		}
	}
	return false
}

// lazyInformer is a dynamic informer that runs only while its CRD serves its version.
type lazyInformer struct {
	gvr    schema.GroupVersionResource
	client dynamic.Interface
	log    logr.Logger
	mark   func(key string)
	ctx    context.Context // of Translator.Run; set before the CRD informer starts

	mu       sync.Mutex
	informer cache.SharedIndexInformer
	cancel   context.CancelFunc
	done     chan struct{}
}

// indexer returns the informer's cache, or nil while it does not run.
func (l *lazyInformer) indexer() cache.Indexer {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.informer == nil {
		return nil
	}
	return l.informer.GetIndexer()
}

func (l *lazyInformer) hasSynced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.informer == nil || l.informer.HasSynced()
}

// update starts or stops the informer as the CRD serves the version or not.
func (l *lazyInformer) update(crd *unstructured.Unstructured) {
	if !crdServes(crd, l.gvr.Version) {
		l.stop()
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.informer != nil || l.ctx == nil || l.ctx.Err() != nil {
		return
	}
	inf := dynamicinformer.NewFilteredDynamicInformer(l.client, l.gvr, "", 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}, nil).Informer()
	if err := inf.SetTransform(stripMeta); err != nil {
		l.log.Error(err, "Cannot watch", "resource", l.gvr.String())
		return
	}
	if _, err := inf.AddEventHandler(keyHandler(l.mark)); err != nil {
		l.log.Error(err, "Cannot watch", "resource", l.gvr.String())
		return
	}
	ctx, cancel := context.WithCancel(l.ctx)
	l.informer, l.cancel, l.done = inf, cancel, make(chan struct{})
	done := l.done
	go func() {
		defer close(done)
		inf.RunWithContext(ctx)
	}()
	l.log.Info("Watching a custom resource: its CRD is installed", "resource", l.gvr.String())
}

// stop stops the informer; the translation then sees every object of its kind as gone.
func (l *lazyInformer) stop() {
	l.mu.Lock()
	inf, cancel, done := l.informer, l.cancel, l.done
	l.informer, l.cancel, l.done = nil, nil, nil
	l.mu.Unlock()
	if inf == nil {
		return
	}
	cancel()
	<-done
	// Notifications still queued when the informer stopped are lost (a CRD's deletion deletes its objects
	// first): have the translation re-check every object of this kind it knows.
	keys := inf.GetIndexer().ListKeys()
	l.mark(allKeys)
	if l.ctx.Err() == nil {
		l.log.Info("Stopped watching a custom resource: its CRD is gone", "resource", l.gvr.String(), "objects", len(keys))
	}
}
