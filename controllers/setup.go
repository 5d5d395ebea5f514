// Package controllers wires the operator's reconcilers into a controller-runtime manager; main.go and the
// envtest suites use the same wiring.
package controllers

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-dev/ambient-operator/controllers/ambientmesh"
	"github.com/ambient-dev/ambient-operator/controllers/render"
	"github.com/ambient-dev/ambient-operator/controllers/waypoint"
)

// Options configure the operator.
type Options struct {
	// Registry holds the data-plane images of supported versions (default render.DefaultRegistry).
	Registry string
	// Now is the clock of rollout deadlines (default time.Now); tests move it.
	Now func() time.Time
}

// EventSource is the reporting controller of the operator's Events.
const EventSource = "ambient-operator"

// Setup registers every reconciler with the manager. Gateways are reconciled only when the Gateway API
// CRDs are installed; it says so in the returned bool.
func Setup(mgr ctrl.Manager, opts Options) (gatewayAPI bool, err error) {
	if opts.Registry == "" {
		opts.Registry = render.DefaultRegistry
	}
	gatewayAPI, err = hasGatewayAPI(mgr)
	if err != nil {
		return false, err
	}
	rec := mgr.GetEventRecorder(EventSource)
	if err := (&ambientmesh.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(), Recorder: rec,
		Registry: opts.Registry, GatewayAPI: gatewayAPI, Now: opts.Now,
	}).SetupWithManager(mgr); err != nil {
		return false, fmt.Errorf("set up the AmbientMesh controller: %w", err)
	}
	if err := (&waypoint.Reconciler{
		Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: rec, Registry: opts.Registry,
	}).SetupWithManager(mgr); err != nil {
		return false, fmt.Errorf("set up the Waypoint controller: %w", err)
	}
	if gatewayAPI {
		if err := (&waypoint.GatewayReconciler{
			Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: rec, Registry: opts.Registry,
		}).SetupWithManager(mgr); err != nil {
			return false, fmt.Errorf("set up the Gateway controller: %w", err)
		}
	}
	return gatewayAPI, nil
}

func hasGatewayAPI(mgr ctrl.Manager) (bool, error) {
	_, err := mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: gatewayv1.GroupName, Kind: "Gateway"}, gatewayv1.GroupVersion.Version)
	switch {
	case err == nil:
		return true, nil
	case meta.IsNoMatchError(err):
		return false, nil
	default:
		return false, fmt.Errorf("discover the Gateway API: %w", err)
	}
}

// CacheOptions keep the operator's informers small: the kinds it creates are cached only when they carry
// its managed-by label, so a large cluster's ConfigMaps, Services and Pods do not fill its memory.
func CacheOptions() cache.Options {
	managed := labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedByValue})
	byObject := map[client.Object]cache.ByObject{}
	for _, obj := range []client.Object{
		&corev1.ConfigMap{}, &corev1.Service{}, &corev1.ServiceAccount{}, &corev1.Pod{},
		&appsv1.Deployment{}, &appsv1.DaemonSet{}, &policyv1.PodDisruptionBudget{}, &autoscalingv2.HorizontalPodAutoscaler{},
		&rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{},
	} {
		byObject[obj] = cache.ByObject{Label: managed}
	}
	return cache.Options{ByObject: byObject}
}
