package waypoint

import (
	"context"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/ambientmesh"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// Reconciler reconciles Waypoints.
type Reconciler struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	Registry string
}

// +kubebuilder:rbac:groups=ambient.dev,resources=waypoints,verbs=get;list;watch
// +kubebuilder:rbac:groups=ambient.dev,resources=waypoints/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;update;patch;delete

// Reconcile deploys a Waypoint and reports its status.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	wp := &ambientv1alpha1.Waypoint{}
	if err := r.Client.Get(ctx, req.NamespacedName, wp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !wp.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // owned objects go with it
	}
	d := &deployer{Client: r.Client, Scheme: r.Scheme, Registry: r.Registry}
	st := wp.Status.DeepCopy()
	obs, prob, err := r.reconcile(ctx, d, wp)
	if err != nil {
		ambientmesh.ReconcileErrors.WithLabelValues("waypoint", "Error").Inc()
	}
	if prob != nil && err == nil {
		r.notAccepted(wp, st, prob)
	} else {
		setWaypointStatus(wp, st, obs)
	}
	return ctrl.Result{}, errors.Join(err, r.patchStatus(ctx, wp, st))
}

func (r *Reconciler) reconcile(ctx context.Context, d *deployer, wp *ambientv1alpha1.Waypoint) (observation, *problem, error) {
	mesh, prob, err := d.check(ctx, wp.Namespace)
	if err != nil || prob != nil {
		return observation{}, prob, err
	}
	if prob, err := d.conflict(ctx, wp); err != nil || prob != nil {
		return observation{}, prob, err
	}
	comp, err := d.component(ctx, mesh, wp.Name, wp.Namespace, wp.Spec.Image)
	if err != nil {
		return observation{}, &problem{ReasonInvalidMesh, "The AmbientMesh names no runnable version: " + err.Error()}, nil
	}
	rootPEM, err := d.rootCert(ctx, mesh)
	if err != nil {
		return observation{}, nil, err
	}
	obs, err := d.deploy(ctx, wp, mesh, render.WaypointInputs{
		Name: wp.Name, Namespace: wp.Namespace, Spec: wp.Spec, Component: comp, Mesh: mesh,
	}, rootPEM)
	return obs, nil, err
}

func (r *Reconciler) notAccepted(wp *ambientv1alpha1.Waypoint, st *ambientv1alpha1.WaypointStatus, p *problem) {
	if c := meta.FindStatusCondition(st.Conditions, ambientv1alpha1.ConditionAccepted); c == nil || c.Status != metav1.ConditionFalse || c.Reason != p.reason {
		r.Recorder.Eventf(wp, nil, corev1.EventTypeWarning, p.reason, "Validate", "%s", p.message)
	}
	gen := wp.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionAccepted, Status: metav1.ConditionFalse, Reason: p.reason, Message: p.message, ObservedGeneration: gen})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionProgrammed, Status: metav1.ConditionFalse, Reason: p.reason, Message: "The waypoint is not deployed", ObservedGeneration: gen})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: p.reason, Message: "The waypoint is not deployed", ObservedGeneration: gen})
	st.Addresses = nil
	st.ObservedGeneration = gen
}

func setWaypointStatus(wp *ambientv1alpha1.Waypoint, st *ambientv1alpha1.WaypointStatus, o observation) {
	gen := wp.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted,
		Message: "The waypoint is deployed", ObservedGeneration: gen})
	st.Replicas, st.ReadyReplicas, st.Version = o.replicas, o.ready, o.version
	if o.ready > 0 && o.clusterIP != "" {
		st.Addresses = []ambientv1alpha1.WaypointAddress{
			{Type: ambientv1alpha1.IPAddressType, Value: o.clusterIP},
			{Type: ambientv1alpha1.HostnameType, Value: o.hostname},
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionProgrammed, Status: metav1.ConditionTrue, Reason: ReasonProgrammed,
			Message: fmt.Sprintf("%d/%d waypoint pods ready", o.ready, o.replicas), ObservedGeneration: gen})
	} else {
		st.Addresses = nil
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionProgrammed, Status: metav1.ConditionFalse, Reason: ReasonPending,
			Message: "Waiting for a waypoint pod to be ready", ObservedGeneration: gen})
	}
	if o.rolledOut && o.ready == o.replicas {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonReady,
			Message: fmt.Sprintf("All %d waypoint pods run %s and are ready", o.replicas, o.version), ObservedGeneration: gen})
	} else {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ambientv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonRolloutUnderway,
			Message: fmt.Sprintf("%d/%d waypoint pods updated, %d ready", o.updated, o.replicas, o.ready), ObservedGeneration: gen})
	}
	st.ObservedGeneration = gen
}

func (r *Reconciler) patchStatus(ctx context.Context, wp *ambientv1alpha1.Waypoint, st *ambientv1alpha1.WaypointStatus) error {
	if equality.Semantic.DeepEqual(&wp.Status, st) {
		return nil
	}
	patch := client.MergeFrom(wp.DeepCopy())
	wp.Status = *st
	if err := r.Client.Status().Patch(ctx, wp, patch); err != nil {
		return fmt.Errorf("patch Waypoint %s/%s status: %w", wp.Namespace, wp.Name, err)
	}
	return nil
}

// SetupWithManager registers the reconciler.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("waypoint").
		For(&ambientv1alpha1.Waypoint{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}).
		Watches(&ambientv1alpha1.AmbientMesh{}, handler.EnqueueRequestsFromMapFunc(r.all)).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.inNamespace)).
		Complete(r)
}

func (r *Reconciler) all(ctx context.Context, _ client.Object) []ctrl.Request {
	return r.list(ctx)
}

func (r *Reconciler) inNamespace(ctx context.Context, ns client.Object) []ctrl.Request {
	return r.list(ctx, client.InNamespace(ns.GetName()))
}

func (r *Reconciler) list(ctx context.Context, opts ...client.ListOption) []ctrl.Request {
	wps := &ambientv1alpha1.WaypointList{}
	if err := r.Client.List(ctx, wps, opts...); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing Waypoints to reconcile them")
		return nil
	}
	reqs := make([]ctrl.Request, 0, len(wps.Items))
	for _, wp := range wps.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&wp)})
	}
	return reqs
}
