package ambientmesh

import (
	"github.com/prometheus/client_golang/prometheus"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Operator metrics beyond controller-runtime's, served on the manager's metrics endpoint.
var (
	rolloutDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambient_operator_rollout_duration_seconds",
		Help:    "Duration of finished data-plane rollouts, from the version change to every component running it.",
		Buckets: prometheus.ExponentialBuckets(5, 2, 12),
	})
	rolloutInProgress = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ambient_operator_rollout_in_progress",
		Help: "1 while a data-plane rollout (or the first installation) is under way.",
	})
	componentsReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ambient_operator_component_ready_pods",
		Help: "Ready pods of each mesh component (xds, nodeProxy, waypoints).",
	}, []string{"component"})
	componentsDesired = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ambient_operator_component_desired_pods",
		Help: "Desired pods of each mesh component (xds, nodeProxy, waypoints).",
	}, []string{"component"})
	reconcileErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambient_operator_reconcile_errors_total",
		Help: "Failed reconciliations by controller and reason (InvalidConfig, CARootMissing, ApplyFailed, ...).",
	}, []string{"controller", "reason"})
)

// ReconcileErrors counts failed reconciliations; the waypoint controllers report theirs here too.
var ReconcileErrors = reconcileErrors

func init() {
	metrics.Registry.MustRegister(rolloutDuration, rolloutInProgress, componentsReady, componentsDesired, reconcileErrors)
}

func pdbRef(namespace, name string) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
}
