package xds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// Metrics are the xDS server's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	policyIssues *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	responses    *prometheus.CounterVec
	pushed       *prometheus.CounterVec
	resources    *prometheus.GaugeVec
	subscribers  *prometheus.GaugeVec
	refused      *prometheus.CounterVec
	batches      prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (when not nil).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		policyIssues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_policy_translation_issues_total",
			Help: "Parts of AuthorizationPolicies that the L4 translation could not carry over as written (and resolved by denying more), by reason.",
		}, []string{"reason"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_nacks_total",
			Help: "Delta xDS responses that subscribers rejected (NACK), by resource type.",
		}, []string{"type"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_responses_total",
			Help: "Delta xDS responses sent to subscribers, by resource type.",
		}, []string{"type"}),
		pushed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_pushed_resources_total",
			Help: "Resources (upserts and removals) sent to subscribers, by resource type.",
		}, []string{"type"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ambient_xds_resources",
			Help: "Resources the xDS server holds, by type.",
		}, []string{"type"}),
		subscribers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ambient_xds_subscribers",
			Help: "Connected delta xDS subscribers, by role (node, waypoint).",
		}, []string{"role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambient_xds_refused_streams_total",
			Help: "xDS streams refused, by reason (bad_request, unauthenticated, forbidden).",
		}, []string{"reason"}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ambient_xds_translation_batch_seconds",
			Help:    "Time to translate one debounced batch of Kubernetes changes into resource changes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.policyIssues, m.nacks, m.responses, m.pushed, m.resources, m.subscribers, m.refused, m.batches} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("xds: register metrics: %w", err)
			}
		}
	}
	for _, r := range []string{ReasonL7AllowRuleDropped, ReasonL7DenyFieldIgnored, ReasonInvalidAllowRuleDropped, ReasonInvalidDenyFieldIgnored,
		ReasonCustomAction, ReasonUnknownAction, ReasonAuditAction, ReasonUnsupportedTarget, ReasonSelectorAndTargetRefs, ReasonInvalidSelector} {
		m.policyIssues.WithLabelValues(r)
	}
	for _, t := range typeNames {
		m.nacks.WithLabelValues(t)
	}
	return m, nil
}

// The resource types, as the client indexes them (see xdsclient.TypeNames).
var (
	typeNames = xdsclient.TypeNames
	typeURLs  = xdsclient.TypeURLs
)

const (
	typeWorkload      = xdsclient.TypeWorkload
	typeService       = xdsclient.TypeService
	typeAuthorization = xdsclient.TypeAuthorization
	numTypes          = xdsclient.NumTypes
)

func typeIndex(url string) (int, bool) { return xdsclient.TypeIndex(url) }

func (m *Metrics) policyIssue(reason string) {
	if m != nil {
		m.policyIssues.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) nack(t int) {
	if m != nil {
		m.nacks.WithLabelValues(typeNames[t]).Inc()
	}
}

func (m *Metrics) response(t, resources int) {
	if m != nil {
		m.responses.WithLabelValues(typeNames[t]).Inc()
		m.pushed.WithLabelValues(typeNames[t]).Add(float64(resources))
	}
}

func (m *Metrics) setResources(t, n int) {
	if m != nil {
		m.resources.WithLabelValues(typeNames[t]).Set(float64(n))
	}
}

func (m *Metrics) subscriber(role string, delta float64) {
	if m != nil {
		m.subscribers.WithLabelValues(role).Add(delta)
	}
}

func (m *Metrics) refuse(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) batch(seconds float64) {
	if m != nil {
		m.batches.Observe(seconds)
	}
}
