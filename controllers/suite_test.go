package controllers_test

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/ambient-dev/ambient-operator/controllers"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

// The operator suite runs the real reconcilers in a manager against envtest's real kube-apiserver. There
// is no kubelet and there are no built-in controllers: the specs play them by writing Deployment and
// DaemonSet status, to walk rollouts forward, stall them and fail them.
func TestOperator(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Operator suite")
}

var (
	env    *envtest.Environment
	k8s    client.Client
	ctx    context.Context
	cancel context.CancelFunc
	// writes counts the operator's write requests (POST, PUT, PATCH, DELETE) to the API server.
	writes = &writeCounter{}
	clock  = &fakeClock{}
)

// fakeClock is real time plus an offset the specs move forward to expire rollout deadlines.
type fakeClock struct{ offset atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

type writeCounter struct {
	mu    sync.Mutex
	count int
	log   []string
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		if req.Method != http.MethodGet {
			w.mu.Lock()
			w.count++
			w.log = append(w.log, req.Method+" "+req.URL.Path)
			w.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

func (w *writeCounter) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count, w.log = 0, nil
}

func (w *writeCounter) get() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count, append([]string(nil), w.log...)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

var _ = BeforeSuite(func() {
	started := newStartWatch("ambientmesh", "waypoint", "gateway")
	ctrl.SetLogger(logr.New(started.wrap(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)).GetSink())))
	ctx, cancel = context.WithCancel(context.Background())
	var err error
	env, err = testenv.New()
	Expect(err).NotTo(HaveOccurred())
	cfg, err := env.Start()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cfg, client.Options{Scheme: testenv.Scheme})
	Expect(err).NotTo(HaveOccurred())

	opCfg := rest.CopyConfig(cfg)
	opCfg.Wrap(writes.wrap)
	mgr, err := ctrl.NewManager(opCfg, ctrl.Options{
		Scheme:                 testenv.Scheme,
		Cache:                  controllers.CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	Expect(err).NotTo(HaveOccurred())
	gatewayAPI, err := controllers.Setup(mgr, controllers.Options{Registry: "registry.test", Now: clock.Now})
	Expect(err).NotTo(HaveOccurred())
	Expect(gatewayAPI).To(BeTrue(), "the suite installs the Gateway API CRDs")
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	// The specs (and the creation-time figure) start with a running operator, as in a cluster: every
	// controller has synced its caches and started its workers.
	Eventually(started.done).WithTimeout(time.Minute).Should(BeClosed())
})

// startWatch sees controller-runtime's "Starting workers" log line of each named controller and closes
// done once all of them started.
type startWatch struct {
	mu      sync.Mutex
	pending map[string]bool
	done    chan struct{}
}

func newStartWatch(controllers ...string) *startWatch {
	w := &startWatch{pending: map[string]bool{}, done: make(chan struct{})}
	for _, c := range controllers {
		w.pending[c] = true
	}
	return w
}

func (w *startWatch) wrap(sink logr.LogSink) logr.LogSink { return &watchSink{LogSink: sink, w: w} }

func (w *startWatch) saw(controller string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.pending[controller] {
		return
	}
	delete(w.pending, controller)
	if len(w.pending) == 0 {
		close(w.done)
	}
}

// watchSink passes every line on and remembers the "controller" value given through WithValues.
type watchSink struct {
	logr.LogSink
	w          *startWatch
	controller string
}

func (s *watchSink) Info(level int, msg string, kv ...any) {
	if msg == "Starting workers" {
		s.w.saw(s.controller)
	}
	s.LogSink.Info(level, msg, kv...)
}

func (s *watchSink) WithValues(kv ...any) logr.LogSink {
	c := s.controller
	for i := 0; i+1 < len(kv); i += 2 {
		if k, ok := kv[i].(string); ok && k == "controller" {
			c, _ = kv[i+1].(string)
		}
	}
	return &watchSink{LogSink: s.LogSink.WithValues(kv...), w: s.w, controller: c}
}

func (s *watchSink) WithName(name string) logr.LogSink {
	return &watchSink{LogSink: s.LogSink.WithName(name), w: s.w, controller: s.controller}
}

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
