package xds

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"
)

// Scale of TestScale (DESIGN.md section 7).
const (
	scalePods       = 100_000
	scaleServices   = 10_000
	scaleNodes      = 1_000
	scaleNamespaces = 100
	scalePolicies   = 200
)

// TestScale builds the state of a synthetic mesh of 100k pods, 10k services and 1k nodes directly from
// informer-shaped caches (no API server), then connects subscribers over real gRPC on loopback and
// measures how long one pod change takes to reach all of them. It prints figures and asserts nothing
// about time. Run it with:
//
//	AMBIENT_XDS_SCALE=1 go test ./xds -run TestScale -v -count=1
//
// AMBIENT_XDS_SCALE_SUBSCRIBERS sets the number of subscribers (default 1000).
func TestScale(t *testing.T) {
	if os.Getenv("AMBIENT_XDS_SCALE") == "" {
		t.Skip("set AMBIENT_XDS_SCALE=1 to run the scale test")
	}
	subs := 1000
	if v := os.Getenv("AMBIENT_XDS_SCALE_SUBSCRIBERS"); v != "" {
		subs, _ = strconv.Atoi(v)
	}
	report := func(format string, args ...any) { t.Logf(format, args...) }

	runtime.GC()
	base := heapInUse()
	src, typical := syntheticMesh(t)
	runtime.GC()
	cacheHeap := heapInUse() - base
	report("caches (stripped pods, services, slices, namespaces, policies): %d MiB of heap", cacheHeap>>20)

	srv, err := NewServer(ServerOptions{Authenticator: scaleAuth{}, MeshNamespace: testMeshNS, Logger: logr.Discard(), PreEncoded: true})
	if err != nil {
		t.Fatal(err)
	}
	def, _ := labels.Parse(DefaultEnrollmentSelector)
	c := newCore(src, testMeshNS, enrollment{namespaces: def, pods: def, acceptIstio: true}, srv, logr.Discard(), nil, DefaultDebounce, DefaultMaxDelay)

	start := time.Now()
	d := c.take()
	for _, k := range src.pods.ListKeys() {
		d[kindPod][k] = struct{}{}
	}
	for _, k := range src.services.ListKeys() {
		d[kindService][k] = struct{}{}
	}
	for _, k := range src.policies().ListKeys() {
		d[kindPolicy][k] = struct{}{}
	}
	changes := c.process(d)
	translated := time.Since(start)
	srv.Apply(changes)
	built := time.Since(start)
	w, s, p := srv.Counts()
	clear(changes) // the translator's output is garbage once applied
	runtime.GC()
	stateHeap := heapInUse() - base - cacheHeap
	report("full state: %d workloads, %d services, %d policies built in %s (translation %s, encoding+indexing %s)",
		w, s, p, built.Round(time.Millisecond), translated.Round(time.Millisecond), (built - translated).Round(time.Millisecond))
	report("server state (encoded resources, indexes, translator state): %d MiB of heap; total heap %d MiB; RSS %d MiB",
		stateHeap>>20, (heapInUse()-base+base)>>20, rssBytes()>>20)

	var total int
	srv.mu.RLock()
	for _, e := range srv.entries[typeWorkload] {
		total += len(e.value)
	}
	tw := srv.entries[typeWorkload][typical]
	srv.mu.RUnlock()
	report("Workload size: typical %d B (%s), mean %d B over %d; as a delta xDS Resource (name, version, Any) %d B",
		len(tw.value), typical, total/w, w, len(tw.enc))

	// One pod change, no subscribers: the work is independent of the mesh size.
	podKey := typical
	var oneChange time.Duration
	const rounds = 200
	for i := range rounds {
		flipReady(t, src.pods, podKey, i)
		t0 := time.Now()
		c.mark(kindPod, podKey)
		c.flush(c.take())
		oneChange += time.Since(t0)
	}
	report("one pod change (translate + encode + index), no subscribers: %s mean", (oneChange / rounds).Round(time.Microsecond))

	if subs <= 0 {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.ForceServerCodecV2(Codec()))
	srv.Register(g)
	go func() { _ = g.Serve(ln) }()
	defer func() { srv.Close(); g.Stop() }()

	connStart := time.Now()
	fleet := make([]*scaleSub, subs)
	var wg sync.WaitGroup
	for i := range fleet {
		fleet[i] = dialScale(t, ln.Addr().String(), fmt.Sprintf("node-%04d", i%scaleNodes))
	}
	for _, f := range fleet {
		wg.Go(func() { <-f.synced })
	}
	wg.Wait()
	report("%d subscribers connected and received the full state (%d MiB each) in %s; RSS %d MiB",
		subs, fleet[0].bytes.Load()>>20, time.Since(connStart).Round(time.Millisecond), rssBytes()>>20)

	measure := func(name string, debounced bool) {
		var all, worst []time.Duration
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		if debounced {
			go func() { defer close(done); c.run(ctx) }()
		} else {
			close(done)
		}
		for i := range 20 {
			flipReady(t, src.pods, podKey, rounds+i)
			for _, f := range fleet {
				f.reset(podKey)
			}
			t0 := time.Now()
			c.mark(kindPod, podKey)
			if !debounced {
				c.flush(c.take())
			}
			var last time.Duration
			for _, f := range fleet {
				lat := f.wait().Sub(t0)
				all = append(all, lat)
				last = max(last, lat)
			}
			worst = append(worst, last)
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		<-done
		slices.Sort(all)
		slices.Sort(worst)
		report("%s: one pod change to %d subscribers: p50 %s, p99 %s, max %s (slowest subscriber per change: median %s)",
			name, subs, pct(all, 50), pct(all, 99), all[len(all)-1].Round(time.Microsecond), pct(worst, 50))
	}
	if path := os.Getenv("AMBIENT_XDS_SCALE_PROFILE"); path != "" {
		f, err := os.Create(path) // #nosec G304 G703 -- a path the person running the test chose
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	measure("push (translate, encode, fan out, send, receive)", false)
	measure(fmt.Sprintf("end to end with the %s debounce", DefaultDebounce), true)
	report("RSS at the end: %d MiB", rssBytes()>>20)
	for _, f := range fleet {
		f.close()
	}
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)].Round(time.Microsecond)
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// rssBytes reads the resident set size of this process (Linux).
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func flipReady(t *testing.T, pods cache.Indexer, key string, i int) {
	o, ok, _ := pods.GetByKey(key)
	if !ok {
		t.Fatalf("no pod %s", key)
	}
	p := o.(*corev1.Pod).DeepCopy()
	st := corev1.ConditionTrue
	if i%2 == 0 {
		st = corev1.ConditionFalse
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	if err := pods.Update(p); err != nil {
		t.Fatal(err)
	}
}

// syntheticMesh fills caches as the informers would (pods go through the same transform), and returns
// the key of a typical pod.
func syntheticMesh(t *testing.T) (sources, string) {
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, indexUseWaypoint: useWaypointIndex})
	services := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, indexUseWaypoint: useWaypointIndex})
	slicesIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, indexPod: slicePodIndex, indexService: sliceServiceIndex})
	namespaces := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	policies := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	for n := range scaleNamespaces {
		must(namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("team-%02d", n), Labels: map[string]string{
			LabelDataplane: "enabled", "kubernetes.io/metadata.name": fmt.Sprintf("team-%02d", n)}}}))
	}
	perSvc := scalePods / scaleServices
	svcPerNS := scaleServices / scaleNamespaces
	podIP := 0
	typical := ""
	for si := range scaleServices {
		ns := fmt.Sprintf("team-%02d", si/svcPerNS)
		app := fmt.Sprintf("svc-%04d", si)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns, Labels: map[string]string{"app": app}},
			Spec: corev1.ServiceSpec{
				ClusterIP: fmt.Sprintf("10.96.%d.%d", si/250, si%250+1), Selector: map[string]string{"app": app},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
			},
		}
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		must(services.Add(svc))
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: app + "-abcde", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: app}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(8080)), Protocol: new(corev1.ProtocolTCP)}},
		}
		for pi := range perSvc {
			podIP++
			ip := fmt.Sprintf("10.%d.%d.%d", 64+podIP/65536, (podIP/256)%256, podIP%256)
			name := fmt.Sprintf("%s-7d8f9c6b5-%05d", app, pi)
			pod := realisticPod(ns, name, app, ip, fmt.Sprintf("node-%04d", podIP%scaleNodes))
			stripped, _ := stripPod(pod)
			must(pods.Add(stripped))
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}})
			if typical == "" {
				typical = ns + "/" + name
			}
		}
		must(slicesIdx.Add(es))
	}
	for i := range scalePolicies {
		ns := fmt.Sprintf("team-%02d", i%scaleNamespaces)
		spec := map[string]any{"action": "ALLOW", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
			"principals": []any{"cluster.local/ns/" + ns + "/sa/frontend", "cluster.local/ns/ingress/sa/*"}}}}}}}
		if i%2 == 0 {
			spec["selector"] = map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("svc-%04d", (i%scaleNamespaces)*svcPerNS)}}
		}
		u := policyObj(ns, fmt.Sprintf("policy-%03d", i), spec)
		u["metadata"].(map[string]any)["resourceVersion"] = "1"
		must(policies.Add(&unstructured.Unstructured{Object: u}))
	}
	none := func() cache.Indexer { return nil }
	return sources{pods: pods, services: services, slices: slicesIdx, namespaces: namespaces,
		waypoints: none, gateways: none, policies: func() cache.Indexer { return policies }}, typical
}

// realisticPod is a pod as the API server returns it, before the informer's transform.
func realisticPod(ns, name, app, ip, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: "0b7e2a4c-6f1d-4c1e-9a5e-3f2d1c0b9a87", ResourceVersion: "123456789",
			Labels: map[string]string{"app": app, "version": "v1", "pod-template-hash": "7d8f9c6b5",
				"app.kubernetes.io/part-of": "shop", "security.istio.io/tlsMode": "istio"},
			Annotations: map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "prometheus.io/scrape": "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-7d8f9c6b5",
				UID: "1b7e2a4c-6f1d-4c1e-9a5e-3f2d1c0b9a87", Controller: new(true)}},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1"}},
		},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: app,
			Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/shop/" + app + ":1.2.3",
				Ports:     []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")}},
				Env:       []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: "8080"}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "192.168.0.1",
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue},
			},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, RestartCount: 0, Image: "registry.example.com/shop/" + app + ":1.2.3"}},
		},
	}
}

type scaleAuth struct{}

func (scaleAuth) Authenticate(context.Context, string) (Caller, error) {
	return Caller{Namespace: testMeshNS, ServiceAccount: DefaultNodeServiceAccount}, nil
}

// rawCodec sends protobuf messages and receives raw bytes, so that a thousand in-process subscribers do
// not each decode the full mesh.
type rawCodec struct{}

type rawFrame struct{ b []byte }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	v.(*rawFrame).b = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

var _ encoding.CodecV2 = rawCodec{}

// scaleSub is a node-proxy subscriber that ACKs by reading only the top-level fields of responses.
type scaleSub struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
	synced chan struct{}
	bytes  atomic.Int64

	mu      sync.Mutex
	watch   []byte
	arrived chan time.Time
}

func dialScale(t *testing.T, addr, node string) *scaleSub {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer x"))
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources")
	if err != nil {
		t.Fatal(err)
	}
	s := &scaleSub{conn: conn, cancel: cancel, done: make(chan struct{}), synced: make(chan struct{}), arrived: make(chan time.Time, 1)}
	info := NodeInfo{Role: RoleNode, NodeName: node}
	for typ := range numTypes {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURLs[typ]}
		if typ == 0 {
			req.Node = &corev3.Node{Metadata: info.Metadata()}
		}
		if err := stream.SendMsg(req); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		defer close(s.done)
		syncedTypes := 0
		for {
			var f rawFrame
			if err := stream.RecvMsg(&f); err != nil {
				return
			}
			now := time.Now()
			s.bytes.Add(int64(len(f.b)))
			typeURL, nonce, sys := topLevel(f.b)
			s.mu.Lock()
			if s.watch != nil && bytes.Contains(f.b, s.watch) {
				s.watch = nil
				s.arrived <- now
			}
			s.mu.Unlock()
			if sys == InitialSyncDone {
				if syncedTypes++; syncedTypes == numTypes {
					close(s.synced)
				}
			}
			if err := stream.SendMsg(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: nonce}); err != nil {
				return
			}
		}
	}()
	return s
}

// topLevel reads type_url (4), nonce (5) and system_version_info (1) of a DeltaDiscoveryResponse without
// decoding its resources.
func topLevel(b []byte) (typeURL, nonce, sys string) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 4 || num == 5) {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return
			}
			switch num {
			case 1:
				sys = string(v)
			case 4:
				typeURL = string(v)
			case 5:
				nonce = string(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return
		}
		b = b[m:]
	}
	return
}

func (s *scaleSub) reset(name string) {
	s.mu.Lock()
	s.watch = []byte(name)
	select {
	case <-s.arrived:
	default:
	}
	s.mu.Unlock()
}

func (s *scaleSub) wait() time.Time {
	select {
	case at := <-s.arrived:
		return at
	case <-time.After(30 * time.Second):
		return time.Now().Add(time.Hour)
	}
}

func (s *scaleSub) close() {
	s.cancel()
	<-s.done
	_ = s.conn.Close()
}
