package telemetry

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Values of [ConnectionLabels.Reporter], as Istio reports them: ztunnel is "source" on the client's node
// and "destination" on the server's node; a waypoint reports "waypoint" (Istio's SERVER_GATEWAY).
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
	ReporterWaypoint    = "waypoint"
)

// Values of [ConnectionLabels.ConnectionSecurityPolicy], as ztunnel reports them: "mutual_tls" when the
// connection is carried over HBONE (mutual TLS), else "unknown" (plaintext).
const (
	SecurityPolicyMutualTLS = "mutual_tls"
	SecurityPolicyUnknown   = "unknown"
)

// Values of the response_flags label, as ztunnel reports them. The opened, sent and received counters
// always carry "-"; the closed counter carries the flag of how the connection ended (see [ConnMetrics.Fail]).
// The closed series with "-" exists, at 0, from the first Open of its label set on.
const (
	ResponseFlagsNone          = "-"
	ResponseFlagsDenied        = "DENY"    // denied by authorization policy
	ResponseFlagsConnectFailed = "CONNECT" // the connection towards the destination could not be made
)

// RequestProtocolTCP is the request_protocol label of every connection of the L4 proxies.
const RequestProtocolTCP = "tcp"

// Unknown is the value of a label, or of an access-log field, that is not known, as Istio writes it.
const Unknown = "unknown"

// Reasons of a failed connection: the reason label of ambient_proxy_connection_failures_total, the
// result of the access log. Any other string is counted as [FailureOther].
const (
	// FailureDenied: authorization policy denied the connection (also when a policy change closes an
	// open connection that is no longer allowed).
	FailureDenied = "denied"
	// FailureNoWorkload: the source or destination is not known from the configuration.
	FailureNoWorkload = "no_workload"
	// FailureTLSHandshake: the inbound mutual TLS handshake failed (bad or missing client certificate).
	FailureTLSHandshake = "tls_handshake"
	// FailureHBONEConnect: the tunnel to the peer proxy could not be set up (dial, TLS, HTTP/2).
	FailureHBONEConnect = "hbone_connect"
	// FailureHBONEStatus4xx: the peer proxy answered the CONNECT with 4xx (400 bad request, 401 denied).
	FailureHBONEStatus4xx = "hbone_status_4xx"
	// FailureHBONEStatus5xx: the peer proxy answered the CONNECT with 5xx (503 upstream failure).
	FailureHBONEStatus5xx = "hbone_status_5xx"
	// FailureUpstreamConnect: dialing the destination workload failed.
	FailureUpstreamConnect = "upstream_connect"
	// FailureOther: any other failure.
	FailureOther = "other"
)

// ResultOK is [ConnMetrics.Result] of a connection closed without failure.
const ResultOK = "ok"

// Directions of a connection: the direction label of ambient_proxy_connections_active and the direction
// of the access log. Connections with reporter "source" are outbound, all others inbound.
const (
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"
)

// Results of an xDS update, the result label of ambient_xds_updates_total.
const (
	XDSResultAccepted = "accepted" // ACK
	XDSResultRejected = "rejected" // NACK
)

// failureFlags gives the response flags and the reason label for each known failure reason.
var failureFlags = map[string]string{
	FailureDenied:          ResponseFlagsDenied,
	FailureNoWorkload:      ResponseFlagsConnectFailed,
	FailureTLSHandshake:    ResponseFlagsConnectFailed,
	FailureHBONEConnect:    ResponseFlagsConnectFailed,
	FailureHBONEStatus4xx:  ResponseFlagsConnectFailed,
	FailureHBONEStatus5xx:  ResponseFlagsConnectFailed,
	FailureUpstreamConnect: ResponseFlagsConnectFailed,
	FailureOther:           ResponseFlagsNone,
}

// ConnectionLabels are the Istio labels of one proxied connection, filled once per connection by the
// proxy. An empty field is reported as "unknown" (RequestProtocol defaults to "tcp").
// The *Principal fields are SPIFFE URIs (identity.Identity.String()): "spiffe://td/ns/ns/sa/sa".
type ConnectionLabels struct {
	Reporter string // ReporterSource, ReporterDestination or ReporterWaypoint

	SourceWorkload          string // the workload's name (Deployment, ...), e.g. "sleep"
	SourceCanonicalService  string // service.istio.io/canonical-name, else the app label, else the workload
	SourceCanonicalRevision string // service.istio.io/canonical-revision, else the version label, else "latest"
	SourceWorkloadNamespace string
	SourcePrincipal         string // from the peer's certificate; empty for plaintext
	SourceApp               string // ztunnel sets the canonical service
	SourceVersion           string // ztunnel sets the canonical revision
	SourceCluster           string

	DestinationService           string // the service's hostname, e.g. "httpbin.default.svc.cluster.local"
	DestinationServiceNamespace  string
	DestinationServiceName       string
	DestinationWorkload          string
	DestinationCanonicalService  string
	DestinationCanonicalRevision string
	DestinationWorkloadNamespace string
	DestinationPrincipal         string
	DestinationApp               string
	DestinationVersion           string
	DestinationCluster           string

	RequestProtocol          string // RequestProtocolTCP
	ConnectionSecurityPolicy string // SecurityPolicyMutualTLS or SecurityPolicyUnknown

	// There is no field for response_flags: it is "-" except on the closed counter of a connection
	// that ended with [ConnMetrics.Fail].
}

// tcpLabelNames are the label names of the istio_tcp_* metrics, in Istio's order.
var tcpLabelNames = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

const (
	numTCPLabels       = 23
	responseFlagsIndex = 21
)

// values returns the label values in the order of tcpLabelNames.
func (l *ConnectionLabels) values() [numTCPLabels]string {
	v := [numTCPLabels]string{
		l.Reporter,
		l.SourceWorkload,
		l.SourceCanonicalService,
		l.SourceCanonicalRevision,
		l.SourceWorkloadNamespace,
		l.SourcePrincipal,
		l.SourceApp,
		l.SourceVersion,
		l.SourceCluster,
		l.DestinationService,
		l.DestinationServiceNamespace,
		l.DestinationServiceName,
		l.DestinationWorkload,
		l.DestinationCanonicalService,
		l.DestinationCanonicalRevision,
		l.DestinationWorkloadNamespace,
		l.DestinationPrincipal,
		l.DestinationApp,
		l.DestinationVersion,
		l.DestinationCluster,
		l.RequestProtocol,
		ResponseFlagsNone,
		l.ConnectionSecurityPolicy,
	}
	for i := range v {
		if v[i] == "" {
			v[i] = Unknown
		}
	}
	if l.RequestProtocol == "" {
		v[responseFlagsIndex-1] = RequestProtocolTCP
	}
	return v
}

// Metrics holds the proxy's Prometheus metrics in a registry of its own (with the Go runtime and process
// collectors): the Istio TCP metrics per connection ([Metrics.Open]) and the proxy's own ambient_*
// metrics. It is safe for concurrent use. A nil *Metrics records nothing, which suits tests.
type Metrics struct {
	registry *prometheus.Registry

	tcpOpened   *prometheus.CounterVec
	tcpClosed   *prometheus.CounterVec
	tcpSent     *prometheus.CounterVec
	tcpReceived *prometheus.CounterVec

	// series caches the counters of each label set, so that Open costs one map lookup instead of
	// four lookups by 23 label values in the vectors. Like the vectors, it only grows.
	seriesMu sync.RWMutex
	series   map[ConnectionLabels]*tcpSeries

	active      [2]prometheus.Gauge // by direction: inbound, outbound
	failures    *prometheus.CounterVec
	xdsConnect  prometheus.Gauge
	xdsUpdates  *prometheus.CounterVec
	certificate *expiryCollector
}

// NewMetrics returns the metrics, registered in a new registry.
func NewMetrics() *Metrics {
	tcp := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabelNames)
	}
	m := &Metrics{
		registry:    prometheus.NewRegistry(),
		series:      map[ConnectionLabels]*tcpSeries{},
		tcpOpened:   tcp("istio_tcp_connections_opened_total", "The total number of TCP connections opened."),
		tcpClosed:   tcp("istio_tcp_connections_closed_total", "The total number of TCP connections closed."),
		tcpSent:     tcp("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection."),
		tcpReceived: tcp("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection."),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_proxy_connection_failures_total",
			Help: "Connections that failed, by reason: " + strings.Join(failureReasons(), ", ") + ".",
		}, []string{"reason"}),
		xdsConnect: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambient_xds_connected",
			Help: "1 while the xDS stream to the control plane is up, else 0.",
		}),
		xdsUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_updates_total",
			Help: "xDS responses received, by resource type and result (accepted, rejected).",
		}, []string{"type", "result"}),
		certificate: &expiryCollector{
			desc: prometheus.NewDesc("ambient_certificate_expiry_seconds",
				"Seconds until the workload certificate of an identity expires (negative once expired).",
				[]string{"identity"}, nil),
			notAfter: map[string]time.Time{},
		},
	}
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ambient_proxy_connections_active",
		Help: "Connections open now, by direction (inbound, outbound).",
	}, []string{"direction"})
	m.active[0] = active.WithLabelValues(DirectionInbound)
	m.active[1] = active.WithLabelValues(DirectionOutbound)
	for _, r := range failureReasons() {
		m.failures.WithLabelValues(r) // present at 0, so that rate() works from the first failure on
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpReceived,
		active, m.failures, m.xdsConnect, m.xdsUpdates, m.certificate,
	)
	return m
}

// failureReasons returns the known failure reasons, sorted.
func failureReasons() []string {
	return []string{FailureDenied, FailureHBONEConnect, FailureHBONEStatus4xx, FailureHBONEStatus5xx,
		FailureNoWorkload, FailureOther, FailureTLSHandshake, FailureUpstreamConnect}
}

// Registry returns the registry, to register more collectors or to gather in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves /metrics from the registry, in the Prometheus text format or OpenMetrics as negotiated.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		Registry:          m.registry,
		EnableOpenMetrics: true,
		Timeout:           10 * time.Second,
	}))
	return mux
}

// Open counts a new connection (istio_tcp_connections_opened_total, ambient_proxy_connections_active)
// and returns its handle. Call it once the peers are known, also for a connection about to be denied; end
// every handle with [ConnMetrics.Close] or [ConnMetrics.Fail].
func (m *Metrics) Open(labels ConnectionLabels) *ConnMetrics {
	if m == nil {
		return nil
	}
	c := &ConnMetrics{m: m, series: m.seriesOf(&labels)}
	c.series.opened.Inc()
	c.active = m.active[0]
	if labels.Reporter == ReporterSource {
		c.active = m.active[1]
	}
	c.active.Inc()
	return c
}

// tcpSeries are the counters of one label set.
type tcpSeries struct {
	values                         [numTCPLabels]string
	opened, closed, sent, received prometheus.Counter // closed with response_flags "-"
}

// seriesOf returns the counters of a label set, resolving them the first time.
func (m *Metrics) seriesOf(l *ConnectionLabels) *tcpSeries {
	m.seriesMu.RLock()
	s := m.series[*l]
	m.seriesMu.RUnlock()
	if s != nil {
		return s
	}
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	if s := m.series[*l]; s != nil {
		return s
	}
	s = &tcpSeries{values: l.values()}
	s.opened = m.tcpOpened.WithLabelValues(s.values[:]...)
	s.closed = m.tcpClosed.WithLabelValues(s.values[:]...)
	s.sent = m.tcpSent.WithLabelValues(s.values[:]...)
	s.received = m.tcpReceived.WithLabelValues(s.values[:]...)
	m.series[*l] = s
	return s
}

// ConnectionFailed counts a failure that has no [ConnMetrics] handle, e.g. a TLS handshake that failed
// before the peer was known. reason is one of the Failure* constants; others count as "other".
func (m *Metrics) ConnectionFailed(reason string) {
	if m == nil {
		return
	}
	if _, ok := failureFlags[reason]; !ok {
		reason = FailureOther
	}
	m.failures.WithLabelValues(reason).Inc()
}

// SetXDSConnected sets ambient_xds_connected: call it with true when the xDS stream is up, false when
// it broke.
func (m *Metrics) SetXDSConnected(connected bool) {
	if m == nil {
		return
	}
	v := 0.0
	if connected {
		v = 1
	}
	m.xdsConnect.Set(v)
}

// XDSUpdate counts one xDS response in ambient_xds_updates_total. typ is the resource type, a short
// name ("Workload") or a type URL, of which the part after the last dot is used; result is
// [XDSResultAccepted] or [XDSResultRejected].
func (m *Metrics) XDSUpdate(typ, result string) {
	if m == nil {
		return
	}
	if i := strings.LastIndexByte(typ, '.'); i >= 0 {
		typ = typ[i+1:]
	}
	m.xdsUpdates.WithLabelValues(typ, result).Inc()
}

// SetCertificateExpiry records when the certificate of an identity (its SPIFFE URI) expires;
// ambient_certificate_expiry_seconds reports the seconds left at each scrape.
func (m *Metrics) SetCertificateExpiry(identity string, notAfter time.Time) {
	if m == nil {
		return
	}
	m.certificate.mu.Lock()
	m.certificate.notAfter[identity] = notAfter
	m.certificate.mu.Unlock()
}

// ForgetCertificate stops reporting the certificate of an identity, e.g. when its last workload left
// the node.
func (m *Metrics) ForgetCertificate(identity string) {
	if m == nil {
		return
	}
	m.certificate.mu.Lock()
	delete(m.certificate.notAfter, identity)
	m.certificate.mu.Unlock()
}

// expiryCollector reports the time left of each certificate when scraped.
type expiryCollector struct {
	desc     *prometheus.Desc
	mu       sync.Mutex
	notAfter map[string]time.Time
}

// Describe implements prometheus.Collector.
func (e *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- e.desc }

// Collect implements prometheus.Collector.
func (e *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	for id, t := range e.notAfter {
		ch <- prometheus.MustNewConstMetric(e.desc, prometheus.GaugeValue, t.Sub(now).Seconds(), id)
	}
}

// ConnMetrics records one connection. Its counters are resolved once by [Metrics.Open], so AddSent and
// AddReceived are one atomic add each: call them from the copy loops as data flows, so that long-lived
// connections show up. It is safe for concurrent use; a nil *ConnMetrics records nothing.
type ConnMetrics struct {
	m      *Metrics
	series *tcpSeries
	active prometheus.Gauge
	sentN  atomic.Int64
	recvN  atomic.Int64

	mu     sync.Mutex
	closed bool
	result string
}

// AddReceived counts n bytes of the request direction: read from the source side of the connection and
// forwarded towards the destination (istio_tcp_received_bytes_total).
func (c *ConnMetrics) AddReceived(n int) {
	if c == nil || n <= 0 {
		return
	}
	c.recvN.Add(int64(n))
	c.series.received.Add(float64(n))
}

// AddSent counts n bytes of the response direction: from the destination, written back to the source
// side of the connection (istio_tcp_sent_bytes_total).
func (c *ConnMetrics) AddSent(n int) {
	if c == nil || n <= 0 {
		return
	}
	c.sentN.Add(int64(n))
	c.series.sent.Add(float64(n))
}

// Received returns the bytes counted by AddReceived so far.
func (c *ConnMetrics) Received() int64 {
	if c == nil {
		return 0
	}
	return c.recvN.Load()
}

// Sent returns the bytes counted by AddSent so far.
func (c *ConnMetrics) Sent() int64 {
	if c == nil {
		return 0
	}
	return c.sentN.Load()
}

// Close counts the connection as closed without failure (response_flags "-"). Only the first Close or
// Fail of a connection counts; later calls do nothing.
func (c *ConnMetrics) Close() { c.end(ResultOK, "") }

// Fail counts the connection as closed because of a failure: istio_tcp_connections_closed_total with the
// response flags of the reason ("DENY" for [FailureDenied], "CONNECT" for the failures to connect) and
// ambient_proxy_connection_failures_total{reason}. reason is one of the Failure* constants; others count
// as [FailureOther]. Only the first Close or Fail of a connection counts.
func (c *ConnMetrics) Fail(reason string) {
	flags, ok := failureFlags[reason]
	if !ok {
		reason, flags = FailureOther, ResponseFlagsNone
	}
	c.end(reason, flags)
}

func (c *ConnMetrics) end(result, flags string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.result = true, result
	c.mu.Unlock()

	if flags == "" || flags == ResponseFlagsNone {
		c.series.closed.Inc()
	} else {
		values := c.series.values
		values[responseFlagsIndex] = flags
		c.m.tcpClosed.WithLabelValues(values[:]...).Inc()
	}
	c.active.Dec()
	if result != ResultOK {
		c.m.failures.WithLabelValues(result).Inc()
	}
}

// Result returns "ok" after Close, the failure reason after Fail, and "" while the connection is open.
func (c *ConnMetrics) Result() string {
	if c == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.result
}
