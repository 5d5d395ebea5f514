package telemetry

import (
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

var (
	sleepID   = identity.New("cluster.local", "default", "sleep")
	httpbinID = identity.New("cluster.local", "apps", "httpbin")
)

// outboundLabels are the labels of a node proxy's outbound connection from sleep to httpbin.
func outboundLabels() ConnectionLabels {
	return ConnectionLabels{
		Reporter:                     ReporterSource,
		SourceWorkload:               "sleep",
		SourceCanonicalService:       "sleep",
		SourceCanonicalRevision:      "latest",
		SourceWorkloadNamespace:      "default",
		SourcePrincipal:              sleepID.String(),
		SourceApp:                    "sleep",
		SourceVersion:                "latest",
		SourceCluster:                "Kubernetes",
		DestinationService:           "httpbin.apps.svc.cluster.local",
		DestinationServiceNamespace:  "apps",
		DestinationServiceName:       "httpbin",
		DestinationWorkload:          "httpbin",
		DestinationCanonicalService:  "httpbin",
		DestinationCanonicalRevision: "v1",
		DestinationWorkloadNamespace: "apps",
		DestinationPrincipal:         httpbinID.String(),
		DestinationApp:               "httpbin",
		DestinationVersion:           "v1",
		DestinationCluster:           "Kubernetes",
		ConnectionSecurityPolicy:     SecurityPolicyMutualTLS,
	}
}

// wantOutbound are the Istio labels of outboundLabels, with the given response flags.
func wantOutbound(flags string) map[string]string {
	return map[string]string{
		"reporter":                       "source",
		"source_workload":                "sleep",
		"source_canonical_service":       "sleep",
		"source_canonical_revision":      "latest",
		"source_workload_namespace":      "default",
		"source_principal":               "spiffe://cluster.local/ns/default/sa/sleep",
		"source_app":                     "sleep",
		"source_version":                 "latest",
		"source_cluster":                 "Kubernetes",
		"destination_service":            "httpbin.apps.svc.cluster.local",
		"destination_service_namespace":  "apps",
		"destination_service_name":       "httpbin",
		"destination_workload":           "httpbin",
		"destination_canonical_service":  "httpbin",
		"destination_canonical_revision": "v1",
		"destination_workload_namespace": "apps",
		"destination_principal":          "spiffe://cluster.local/ns/apps/sa/httpbin",
		"destination_app":                "httpbin",
		"destination_version":            "v1",
		"destination_cluster":            "Kubernetes",
		"request_protocol":               "tcp",
		"response_flags":                 flags,
		"connection_security_policy":     "mutual_tls",
	}
}

// unknownLabels are the labels of a plaintext inbound connection about which nothing is known.
func unknownLabels(reporter, flags string) map[string]string {
	m := map[string]string{}
	for _, n := range tcpLabelNames {
		m[n] = "unknown"
	}
	m["reporter"] = reporter
	m["request_protocol"] = "tcp"
	m["response_flags"] = flags
	return m
}

func TestTCPMetricsOfAConnection(t *testing.T) {
	tests := []struct {
		name       string
		labels     ConnectionLabels
		end        func(*ConnMetrics)
		wantOpen   map[string]string // labels of opened, sent and received
		wantClosed map[string]string
		wantResult string
		wantFailed string // reason counted in ambient_proxy_connection_failures_total
		direction  string
	}{
		{
			name:       "outbound closed normally",
			labels:     outboundLabels(),
			end:        (*ConnMetrics).Close,
			wantOpen:   wantOutbound("-"),
			wantClosed: wantOutbound("-"),
			wantResult: "ok",
			direction:  "outbound",
		},
		{
			name:       "outbound upstream failure",
			labels:     outboundLabels(),
			end:        func(c *ConnMetrics) { c.Fail(FailureHBONEStatus5xx) },
			wantOpen:   wantOutbound("-"),
			wantClosed: wantOutbound("CONNECT"),
			wantResult: "hbone_status_5xx",
			wantFailed: "hbone_status_5xx",
			direction:  "outbound",
		},
		{
			name:       "inbound denied, nothing known",
			labels:     ConnectionLabels{Reporter: ReporterDestination},
			end:        func(c *ConnMetrics) { c.Fail(FailureDenied) },
			wantOpen:   unknownLabels("destination", "-"),
			wantClosed: unknownLabels("destination", "DENY"),
			wantResult: "denied",
			wantFailed: "denied",
			direction:  "inbound",
		},
		{
			name:       "waypoint, unlisted reason",
			labels:     ConnectionLabels{Reporter: ReporterWaypoint},
			end:        func(c *ConnMetrics) { c.Fail("connection reset by peer") },
			wantOpen:   unknownLabels("waypoint", "-"),
			wantClosed: unknownLabels("waypoint", "-"),
			wantResult: "other",
			wantFailed: "other",
			direction:  "inbound",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			m := NewMetrics()
			c := m.Open(tt.labels)

			g.Expect(gather(t, m, "istio_tcp_connections_opened_total")).To(Equal([]series{{tt.wantOpen, 1}}))
			g.Expect(nonZero(gather(t, m, "istio_tcp_connections_closed_total"))).To(BeEmpty())
			g.Expect(gather(t, m, "ambient_proxy_connections_active")).To(ContainElement(
				series{map[string]string{"direction": tt.direction}, 1}))

			// Bytes show while the connection is open.
			for range 10 {
				c.AddReceived(100)
				c.AddSent(1000)
			}
			c.AddSent(0)
			c.AddSent(-5)
			g.Expect(gather(t, m, "istio_tcp_received_bytes_total")).To(Equal([]series{{tt.wantOpen, 1000}}))
			g.Expect(gather(t, m, "istio_tcp_sent_bytes_total")).To(Equal([]series{{tt.wantOpen, 10000}}))
			g.Expect(c.Received()).To(BeEquivalentTo(1000))
			g.Expect(c.Sent()).To(BeEquivalentTo(10000))
			g.Expect(c.Result()).To(BeEmpty())

			tt.end(c)
			tt.end(c)
			c.Close()
			c.Fail(FailureDenied)

			g.Expect(c.Result()).To(Equal(tt.wantResult))
			g.Expect(nonZero(gather(t, m, "istio_tcp_connections_closed_total"))).To(Equal([]series{{tt.wantClosed, 1}}),
				"closed once, whatever is called after")
			g.Expect(gather(t, m, "istio_tcp_connections_opened_total")).To(Equal([]series{{tt.wantOpen, 1}}))
			g.Expect(gather(t, m, "ambient_proxy_connections_active")).To(ConsistOf(
				series{map[string]string{"direction": "inbound"}, 0},
				series{map[string]string{"direction": "outbound"}, 0}))
			for _, s := range gather(t, m, "ambient_proxy_connection_failures_total") {
				want := 0.0
				if s.labels["reason"] == tt.wantFailed {
					want = 1
				}
				g.Expect(s.value).To(Equal(want), s.labels["reason"])
			}
		})
	}
}

func TestTCPMetricsAggregateConnections(t *testing.T) {
	g := NewWithT(t)
	m := NewMetrics()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			c := m.Open(outboundLabels())
			var inner sync.WaitGroup
			inner.Go(func() { c.AddReceived(3) })
			inner.Go(func() { c.AddSent(7) })
			inner.Wait()
			c.Close()
		})
	}
	wg.Wait()
	g.Expect(gather(t, m, "istio_tcp_connections_opened_total")).To(Equal([]series{{wantOutbound("-"), 50}}))
	g.Expect(gather(t, m, "istio_tcp_connections_closed_total")).To(Equal([]series{{wantOutbound("-"), 50}}))
	g.Expect(gather(t, m, "istio_tcp_received_bytes_total")).To(Equal([]series{{wantOutbound("-"), 150}}))
	g.Expect(gather(t, m, "istio_tcp_sent_bytes_total")).To(Equal([]series{{wantOutbound("-"), 350}}))
}

// TestMetricsExposition checks the scraped names, types and help of the Istio metrics, in the format
// dashboards read.
func TestMetricsExposition(t *testing.T) {
	g := NewWithT(t)
	m := NewMetrics()
	c := m.Open(ConnectionLabels{Reporter: ReporterDestination, ConnectionSecurityPolicy: SecurityPolicyMutualTLS})
	c.AddReceived(5)
	c.Close()
	want := `
# HELP istio_tcp_connections_opened_total The total number of TCP connections opened.
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="destination",request_protocol="tcp",response_flags="-",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="unknown",source_workload_namespace="unknown"} 1
# HELP istio_tcp_received_bytes_total The size of total bytes received during request in case of a TCP connection.
# TYPE istio_tcp_received_bytes_total counter
istio_tcp_received_bytes_total{connection_security_policy="mutual_tls",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="destination",request_protocol="tcp",response_flags="-",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="unknown",source_workload_namespace="unknown"} 5
`
	g.Expect(testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"istio_tcp_connections_opened_total", "istio_tcp_received_bytes_total")).To(Succeed())
	g.Expect(testutil.GatherAndCount(m.Registry(), "istio_tcp_sent_bytes_total")).To(Equal(1),
		"the sent series exists at 0 from Open on")

	// Lint the names and help of everything registered (Go and process collectors included).
	problems, err := testutil.GatherAndLint(m.Registry())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(problems).To(BeEmpty())
}

func TestProxyMetrics(t *testing.T) {
	g := NewWithT(t)
	m := NewMetrics()

	m.SetXDSConnected(true)
	g.Expect(gather(t, m, "ambient_xds_connected")).To(Equal([]series{{map[string]string{}, 1}}))
	m.SetXDSConnected(false)
	g.Expect(gather(t, m, "ambient_xds_connected")).To(Equal([]series{{map[string]string{}, 0}}))

	m.XDSUpdate("type.googleapis.com/ambient.dev.v1alpha1.Workload", XDSResultAccepted)
	m.XDSUpdate("Workload", XDSResultAccepted)
	m.XDSUpdate("Authorization", XDSResultRejected)
	g.Expect(gather(t, m, "ambient_xds_updates_total")).To(ConsistOf(
		series{map[string]string{"type": "Workload", "result": "accepted"}, 2},
		series{map[string]string{"type": "Authorization", "result": "rejected"}, 1},
	))

	m.ConnectionFailed(FailureTLSHandshake)
	m.ConnectionFailed("x509: certificate signed by unknown authority")
	failures := gather(t, m, "ambient_proxy_connection_failures_total")
	g.Expect(failures).To(HaveLen(8), "every known reason is present from the start")
	g.Expect(failures).To(ContainElements(
		series{map[string]string{"reason": "tls_handshake"}, 1},
		series{map[string]string{"reason": "other"}, 1},
		series{map[string]string{"reason": "denied"}, 0},
	))

	m.SetCertificateExpiry(sleepID.String(), time.Now().Add(time.Hour))
	m.SetCertificateExpiry(httpbinID.String(), time.Now().Add(-time.Minute))
	expiry := gather(t, m, "ambient_certificate_expiry_seconds")
	g.Expect(expiry).To(HaveLen(2))
	for _, s := range expiry {
		switch s.labels["identity"] {
		case sleepID.String():
			g.Expect(s.value).To(BeNumerically("~", 3600, 60))
		case httpbinID.String():
			g.Expect(s.value).To(BeNumerically("~", -60, 60))
		default:
			t.Fatalf("unexpected identity %q", s.labels["identity"])
		}
	}
	m.ForgetCertificate(httpbinID.String())
	g.Expect(gather(t, m, "ambient_certificate_expiry_seconds")).To(HaveLen(1))

	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		g.Expect(gather(t, m, name)).NotTo(BeEmpty(), name)
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	g := NewWithT(t)
	var m *Metrics
	c := m.Open(outboundLabels())
	g.Expect(c).To(BeNil())
	c.AddSent(1)
	c.AddReceived(1)
	c.Close()
	c.Fail(FailureDenied)
	g.Expect(c.Sent()).To(BeZero())
	g.Expect(c.Received()).To(BeZero())
	g.Expect(c.Result()).To(BeEmpty())
	m.ConnectionFailed(FailureDenied)
	m.SetXDSConnected(true)
	m.XDSUpdate("Workload", XDSResultAccepted)
	m.SetCertificateExpiry("x", time.Now())
	m.ForgetCertificate("x")
}

// nonZero returns the series with a value other than 0.
func nonZero(ss []series) []series {
	var out []series
	for _, s := range ss {
		if s.value != 0 {
			out = append(out, s)
		}
	}
	return out
}

func BenchmarkConnectionMetrics(b *testing.B) {
	m := NewMetrics()
	labels := outboundLabels()
	b.ReportAllocs()
	for b.Loop() {
		c := m.Open(labels)
		for range 10 {
			c.AddReceived(16 << 10)
			c.AddSent(16 << 10)
		}
		c.Close()
	}
}

// BenchmarkConnectionMetricsChunk is the cost the copy loops pay per chunk.
func BenchmarkConnectionMetricsChunk(b *testing.B) {
	m := NewMetrics()
	c := m.Open(outboundLabels())
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		c.AddSent(16 << 10)
	}
}
