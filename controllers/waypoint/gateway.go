package waypoint

import (
	"context"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/ambientmesh"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// GatewayReconciler runs Gateways of the ambient-waypoint class as waypoints and writes Gateway status.
type GatewayReconciler struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	Registry string
}

// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=gateways,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=gateways/status,verbs=get;update;patch

// Reconcile deploys a waypoint Gateway and reports its status.
func (r *GatewayReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	gw := &gatewayv1.Gateway{}
	if err := r.Client.Get(ctx, req.NamespacedName, gw); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if gw.Spec.GatewayClassName != ambientv1alpha1.WaypointGatewayClass || !gw.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	d := &deployer{Client: r.Client, Scheme: r.Scheme, Registry: r.Registry}
	st := gw.Status.DeepCopy()
	obs, prob, err := r.reconcile(ctx, d, gw)
	if err != nil {
		ambientmesh.ReconcileErrors.WithLabelValues("gateway", "Error").Inc()
	}
	switch {
	case err != nil:
	case prob != nil:
		r.notAccepted(gw, st, prob)
	default:
		setGatewayStatus(gw, st, obs)
	}
	return ctrl.Result{}, errors.Join(err, r.patchStatus(ctx, gw, st))
}

// waypointSpec turns a Gateway into the Waypoint it stands for.
func waypointSpec(gw *gatewayv1.Gateway) ambientv1alpha1.WaypointSpec {
	spec := ambientv1alpha1.WaypointSpec{For: ambientv1alpha1.WaypointForService}
	for _, v := range []string{gw.Annotations[render.AnnotationWaypointFor], gw.Labels[render.IstioLabelWaypointFor]} {
		switch f := ambientv1alpha1.WaypointFor(v); f {
		case ambientv1alpha1.WaypointForService, ambientv1alpha1.WaypointForWorkload, ambientv1alpha1.WaypointForAll:
			spec.For = f
		}
	}
	return spec
}

// validate checks the Gateway's listeners: exactly one, protocol HBONE on port 15008.
func validateGateway(gw *gatewayv1.Gateway) *problem {
	if len(gw.Spec.Addresses) > 0 {
		return &problem{string(gatewayv1.GatewayReasonUnsupportedAddress), "spec.addresses is not supported for waypoints: remove it; the waypoint's Service address is reported in status"}
	}
	ls := gw.Spec.Listeners
	if len(ls) != 1 || string(ls[0].Protocol) != ambientv1alpha1.HBONEProtocol || ls[0].Port != ambientv1alpha1.HBONEPort {
		return &problem{string(gatewayv1.GatewayReasonListenersNotValid), fmt.Sprintf(
			"A waypoint Gateway has exactly one listener with protocol %s on port %d (for example name \"mesh\"); spec.listeners has %s",
			ambientv1alpha1.HBONEProtocol, ambientv1alpha1.HBONEPort, describeListeners(ls))}
	}
	return nil
}

func describeListeners(ls []gatewayv1.Listener) string {
	if len(ls) == 0 {
		return "none"
	}
	s := ""
	for i, l := range ls {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s (%s %d)", l.Name, l.Protocol, l.Port)
	}
	return s
}

func (r *GatewayReconciler) reconcile(ctx context.Context, d *deployer, gw *gatewayv1.Gateway) (observation, *problem, error) {
	if p := validateGateway(gw); p != nil {
		return observation{}, p, nil
	}
	mesh, prob, err := d.check(ctx, gw.Namespace)
	if err != nil || prob != nil {
		return observation{}, prob, err
	}
	if prob, err := d.conflict(ctx, gw); err != nil || prob != nil {
		return observation{}, prob, err
	}
	comp, err := d.component(ctx, mesh, gw.Name, gw.Namespace, "")
	if err != nil {
		return observation{}, &problem{ReasonInvalidMesh, "The AmbientMesh names no runnable version: " + err.Error()}, nil
	}
	rootPEM, err := d.rootCert(ctx, mesh)
	if err != nil {
		return observation{}, nil, err
	}
	obs, err := d.deploy(ctx, gw, mesh, render.WaypointInputs{
		Name: gw.Name, Namespace: gw.Namespace, Spec: waypointSpec(gw), Component: comp, Mesh: mesh,
		ExtraPodLabels: map[string]string{render.LabelGatewayName: gw.Name},
	}, rootPEM)
	return obs, nil, err
}

func (r *GatewayReconciler) notAccepted(gw *gatewayv1.Gateway, st *gatewayv1.GatewayStatus, p *problem) {
	if c := meta.FindStatusCondition(st.Conditions, string(gatewayv1.GatewayConditionAccepted)); c == nil || c.Status != metav1.ConditionFalse || c.Reason != p.reason {
		r.Recorder.Eventf(gw, nil, corev1.EventTypeWarning, p.reason, "Validate", "%s", p.message)
	}
	gen := gw.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionFalse,
		Reason: p.reason, Message: p.message, ObservedGeneration: gen})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
		Reason: string(gatewayv1.GatewayReasonInvalid), Message: "The waypoint is not deployed", ObservedGeneration: gen})
	st.Addresses = nil
	st.Listeners = listenerStatuses(gw, p, false)
}

func setGatewayStatus(gw *gatewayv1.Gateway, st *gatewayv1.GatewayStatus, o observation) {
	gen := gw.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "Deployed as an ambient waypoint", ObservedGeneration: gen})
	programmed := o.ready > 0 && o.clusterIP != ""
	if programmed {
		st.Addresses = []gatewayv1.GatewayStatusAddress{{Type: new(gatewayv1.IPAddressType), Value: o.clusterIP}}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionTrue,
			Reason: string(gatewayv1.GatewayReasonProgrammed), Message: fmt.Sprintf("%d/%d waypoint pods ready", o.ready, o.replicas), ObservedGeneration: gen})
	} else {
		st.Addresses = nil
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
			Reason: string(gatewayv1.GatewayReasonPending), Message: "Waiting for a waypoint pod to be ready", ObservedGeneration: gen})
	}
	st.Listeners = listenerStatuses(gw, nil, programmed)
}

// listenerStatuses reports each listener: the HBONE listener is accepted; any other listener says why not.
func listenerStatuses(gw *gatewayv1.Gateway, p *problem, programmed bool) []gatewayv1.ListenerStatus {
	out := make([]gatewayv1.ListenerStatus, 0, len(gw.Spec.Listeners))
	for _, l := range gw.Spec.Listeners {
		ls := gatewayv1.ListenerStatus{Name: l.Name, SupportedKinds: []gatewayv1.RouteGroupKind{}}
		cond := func(t gatewayv1.ListenerConditionType, ok bool, reason gatewayv1.ListenerConditionReason, msg string) {
			s := metav1.ConditionFalse
			if ok {
				s = metav1.ConditionTrue
			}
			meta.SetStatusCondition(&ls.Conditions, metav1.Condition{Type: string(t), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: gw.Generation})
		}
		switch {
		case string(l.Protocol) != ambientv1alpha1.HBONEProtocol:
			cond(gatewayv1.ListenerConditionAccepted, false, gatewayv1.ListenerReasonUnsupportedProtocol, fmt.Sprintf("Waypoints serve only protocol %s", ambientv1alpha1.HBONEProtocol))
		case l.Port != ambientv1alpha1.HBONEPort:
			cond(gatewayv1.ListenerConditionAccepted, false, gatewayv1.ListenerReasonPortUnavailable, fmt.Sprintf("Waypoints listen only on port %d", ambientv1alpha1.HBONEPort))
		case p != nil:
			cond(gatewayv1.ListenerConditionAccepted, false, gatewayv1.ListenerReasonInvalid, p.message)
		default:
			cond(gatewayv1.ListenerConditionAccepted, true, gatewayv1.ListenerReasonAccepted, "HBONE listener")
		}
		cond(gatewayv1.ListenerConditionResolvedRefs, true, gatewayv1.ListenerReasonResolvedRefs, "No references")
		if programmed {
			cond(gatewayv1.ListenerConditionProgrammed, true, gatewayv1.ListenerReasonProgrammed, "A waypoint pod is ready")
		} else {
			cond(gatewayv1.ListenerConditionProgrammed, false, gatewayv1.ListenerReasonPending, "No waypoint pod is ready")
		}
		out = append(out, ls)
	}
	return out
}

func (r *GatewayReconciler) patchStatus(ctx context.Context, gw *gatewayv1.Gateway, st *gatewayv1.GatewayStatus) error {
	if equality.Semantic.DeepEqual(&gw.Status, st) {
		return nil
	}
	patch := client.MergeFrom(gw.DeepCopy())
	gw.Status = *st
	if err := r.Client.Status().Patch(ctx, gw, patch); err != nil {
		return fmt.Errorf("patch Gateway %s/%s status: %w", gw.Namespace, gw.Name, err)
	}
	return nil
}

// SetupWithManager registers the reconciler for Gateways of the ambient-waypoint class.
func (r *GatewayReconciler) SetupWithManager(mgr ctrl.Manager) error {
	ours := predicate.NewPredicateFuncs(func(o client.Object) bool {
		gw, ok := o.(*gatewayv1.Gateway)
		return ok && gw.Spec.GatewayClassName == ambientv1alpha1.WaypointGatewayClass
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("gateway").
		For(&gatewayv1.Gateway{}, builder.WithPredicates(ours)).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Watches(&ambientv1alpha1.AmbientMesh{}, handler.EnqueueRequestsFromMapFunc(r.all)).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.inNamespace)).
		Complete(r)
}

func (r *GatewayReconciler) all(ctx context.Context, _ client.Object) []ctrl.Request {
	return r.list(ctx)
}

func (r *GatewayReconciler) inNamespace(ctx context.Context, ns client.Object) []ctrl.Request {
	return r.list(ctx, client.InNamespace(ns.GetName()))
}

func (r *GatewayReconciler) list(ctx context.Context, opts ...client.ListOption) []ctrl.Request {
	gws := &gatewayv1.GatewayList{}
	if err := r.Client.List(ctx, gws, opts...); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing Gateways to reconcile them")
		return nil
	}
	var reqs []ctrl.Request
	for _, gw := range gws.Items {
		if gw.Spec.GatewayClassName == ambientv1alpha1.WaypointGatewayClass {
			reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&gw)})
		}
	}
	return reqs
}
