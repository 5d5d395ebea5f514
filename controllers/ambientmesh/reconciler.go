// Package ambientmesh reconciles the AmbientMesh: it creates the mesh namespace, the CA root, the xDS
// server and the node proxies with their RBAC, and the ambient-waypoint GatewayClass; it rolls version
// changes out in a safe order (xDS server, node proxies, waypoints), stops a rollout that makes no
// progress, and reports in the status exactly where the mesh stands.
package ambientmesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// Component names in the status.
const (
	ComponentXDS       = "xds"
	ComponentNodeProxy = "nodeProxy"
	ComponentWaypoints = "waypoints"
)

// Event and condition reasons.
const (
	ReasonInvalidConfig     = "InvalidConfig"
	ReasonCARootMissing     = "CARootMissing"
	ReasonCARootGenerated   = "CARootGenerated"
	ReasonApplyFailed       = "ApplyFailed"
	ReasonReconciled        = "Reconciled"
	ReasonInstalling        = "Installing"
	ReasonRolloutStarted    = "RolloutStarted"
	ReasonRolloutInProgress = "RolloutInProgress"
	ReasonRolloutStalled    = "RolloutStalled"
	ReasonRolloutFinished   = "RolloutFinished"
	ReasonRolloutResumed    = "RolloutResumed"
	ReasonAvailable         = "ComponentsAvailable"
	ReasonUnavailable       = "ComponentsUnavailable"
	ReasonNodeByNodeReplace = "NodeProxyReplaced"
)

// Reconciler reconciles the AmbientMesh "default".
type Reconciler struct {
	// Client reads from the cache and writes to the API server.
	Client client.Client
	// APIReader reads uncached: the user's CA Secret, which the operator does not watch.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// Registry holds the data-plane images of supported versions.
	Registry string
	// GatewayAPI says whether the Gateway API CRDs are installed; without them no GatewayClass is made.
	GatewayAPI bool
	// Now is the clock; tests move it.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=ambient.dev,resources=ambientmeshes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=ambient.dev,resources=ambientmeshes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=ambient.dev,resources=ambientmeshes/finalizers,verbs=update
// +kubebuilder:rbac:groups=ambient.dev,resources=waypoints,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts;services;configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;daemonsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings;roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=security.istio.io,resources=authorizationpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=gatewayclasses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=gatewayclasses/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings the mesh to its desired state and reports it.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	mesh := &ambientv1alpha1.AmbientMesh{}
	if err := r.Client.Get(ctx, req.NamespacedName, mesh); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !mesh.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.finalize(ctx, mesh)
	}
	if !controllerutil.ContainsFinalizer(mesh, render.MeshFinalizer) {
		patch := client.MergeFrom(mesh.DeepCopy())
		controllerutil.AddFinalizer(mesh, render.MeshFinalizer)
		if err := r.Client.Patch(ctx, mesh, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer to AmbientMesh %s: %w", mesh.Name, err)
		}
	}

	st := mesh.Status.DeepCopy()
	result, err := r.reconcile(ctx, mesh, st)
	if err != nil {
		reconcileErrors.WithLabelValues("ambientmesh", reasonOf(err)).Inc()
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: ambientv1alpha1.ConditionReconciled, Status: metav1.ConditionFalse,
			Reason: reasonOf(err), Message: truncate(err.Error()), ObservedGeneration: mesh.Generation,
		})
	}
	statusErr := r.patchStatus(ctx, mesh, st)
	if err != nil {
		var cfg *configError
		if errors.As(err, &cfg) {
			// Invalid configuration waits for the user to change the spec: no retry loop.
			log.Info("AmbientMesh configuration is invalid", "mesh", klog.KObj(mesh), "reason", cfg.reason, "message", cfg.msg)
			return ctrl.Result{}, statusErr
		}
	}
	return result, errors.Join(err, statusErr)
}

// configError is a problem only the user can fix; it is reported, not retried.
type configError struct{ reason, msg string }

func (e *configError) Error() string { return e.msg }

// reasonedError carries a condition reason for a transient failure.
type reasonedError struct {
	reason string
	err    error
}

func (e *reasonedError) Error() string { return e.err.Error() }
func (e *reasonedError) Unwrap() error { return e.err }

func reasonOf(err error) string {
	var cfg *configError
	if errors.As(err, &cfg) {
		return cfg.reason
	}
	var re *reasonedError
	if errors.As(err, &re) {
		return re.reason
	}
	return "Error"
}

func (r *Reconciler) reconcile(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh, st *ambientv1alpha1.AmbientMeshStatus) (ctrl.Result, error) {
	now := r.Now()
	target, err := r.target(mesh)
	if err != nil {
		r.invalidConfig(mesh, st, ReasonInvalidConfig, err.Error())
		return ctrl.Result{}, &configError{reason: ReasonInvalidConfig, msg: err.Error()}
	}
	if err := r.ensureNamespace(ctx, mesh.Spec.Namespace); err != nil {
		return ctrl.Result{}, &reasonedError{ReasonApplyFailed, err}
	}
	caSecret, rootPEM, err := r.ensureCARoot(ctx, mesh)
	if err != nil {
		return ctrl.Result{}, err
	}
	st.CASecretName = caSecret

	// Observe what runs now.
	ns := mesh.Spec.Namespace
	xdsDep := &appsv1.Deployment{}
	xds, err := r.observe(ctx, types.NamespacedName{Namespace: ns, Name: render.XDSName}, xdsDep, func() observed { return observeDeployment(xdsDep) })
	if err != nil {
		return ctrl.Result{}, err
	}
	nodeDS := &appsv1.DaemonSet{}
	node, err := r.observe(ctx, types.NamespacedName{Namespace: ns, Name: render.NodeName}, nodeDS, func() observed { return observeDaemonSet(nodeDS) })
	if err != nil {
		return ctrl.Result{}, err
	}
	wpDeps := &appsv1.DeploymentList{}
	if err := r.Client.List(ctx, wpDeps, client.MatchingLabels{
		render.LabelComponent: "waypoint", render.LabelManagedBy: render.ManagedByValue,
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list waypoint Deployments: %w", err)
	}
	followers := slices.DeleteFunc(wpDeps.Items, func(d appsv1.Deployment) bool { return d.Labels[render.LabelImagePinned] == "true" })
	waypoints := observeWaypoints(followers)

	// Decide the rollout stage and what each component runs now.
	installing := st.Version == "" && (st.Rollout == nil || st.Rollout.Phase == ambientv1alpha1.RolloutInstalling)
	p := planRollout(installing, target, xds, node, waypoints)
	if idle(st.Rollout, target) && !moved(target, xds, node, waypoints) {
		// Nothing runs another version: a missing component is re-created at the target and unavailable
		// pods are an availability problem (Ready/Degraded), not a rollout.
		p = plan{phase: ambientv1alpha1.RolloutIdle, xds: target, node: target, waypointsMove: true}
	}
	// A stalled rollout stops where it is by construction: a stage starts only when the one before it
	// is done, and the stalled stage keeps its target so that it resumes if its pods recover.
	r.trackRollout(mesh, st, p, target, now)

	objs, err := render.Mesh(mesh, render.MeshInputs{XDS: p.xds, Node: p.node, CASecretName: caSecret, RootCertPEM: rootPEM})
	if err != nil {
		r.invalidConfig(mesh, st, ReasonInvalidConfig, err.Error())
		return ctrl.Result{}, &configError{reason: ReasonInvalidConfig, msg: err.Error()}
	}
	applier := &render.Applier{Client: r.Client, Scheme: r.Scheme}
	for _, obj := range objs {
		// Cluster-scoped objects are cleaned up by the finalizer; the rest are owned by the mesh.
		var owner client.Object = mesh
		if obj.GetNamespace() == "" {
			owner = nil
		}
		if _, err := applier.Apply(ctx, owner, obj); err != nil {
			return ctrl.Result{}, &reasonedError{ReasonApplyFailed, err}
		}
	}
	if mesh.Spec.XDS.Disruption.Enabled != nil && !*mesh.Spec.XDS.Disruption.Enabled {
		if _, err := applier.DeleteIfExists(ctx, pdbRef(ns, render.XDSName)); err != nil {
			return ctrl.Result{}, &reasonedError{ReasonApplyFailed, err}
		}
	}
	if r.GatewayAPI {
		if err := r.ensureGatewayClass(ctx, applier); err != nil {
			return ctrl.Result{}, &reasonedError{ReasonApplyFailed, err}
		}
	}
	if p.phase == ambientv1alpha1.RolloutNodeProxy && mesh.Spec.NodeProxy.UpdateStrategy.Type == ambientv1alpha1.NodeByNodeStrategy {
		if err := r.replaceNextNode(ctx, mesh, target); err != nil {
			return ctrl.Result{}, err
		}
	}

	r.computeStatus(mesh, st, target, xds, node, waypoints)
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: ambientv1alpha1.ConditionReconciled, Status: metav1.ConditionTrue, Reason: ReasonReconciled,
		Message: "The desired state of every component is applied", ObservedGeneration: mesh.Generation,
	})
	st.ObservedGeneration = mesh.Generation

	if st.Rollout.Phase != ambientv1alpha1.RolloutIdle && st.Rollout.Phase != ambientv1alpha1.RolloutStalled {
		// Come back when the stage's deadline expires, even if nothing else happens.
		_, left := stalled(st.Rollout.LastProgressTime.Time, deadline(mesh), now)
		return ctrl.Result{RequeueAfter: max(left, time.Second)}, nil
	}
	return ctrl.Result{}, nil
}

func (r *Reconciler) observe(ctx context.Context, key types.NamespacedName, obj client.Object, view func() observed) (observed, error) {
	if err := r.Client.Get(ctx, key, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return observed{}, nil
		}
		return observed{}, fmt.Errorf("get %s: %w", key, err)
	}
	return view(), nil
}

// target is the version and image every component should end up running.
func (r *Reconciler) target(mesh *ambientv1alpha1.AmbientMesh) (render.Component, error) {
	image, err := render.ResolveImage(r.Registry, mesh.Spec.Version, mesh.Spec.Image)
	if err != nil {
		return render.Component{}, err
	}
	version := render.NormalizeVersion(mesh.Spec.Version)
	if version == "" {
		version = imageTag(image)
	}
	return render.Component{Version: version, Image: image}, nil
}

func imageTag(image string) string {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		d := strings.TrimPrefix(image[i+1:], "sha256:")
		return "digest-" + d[:min(12, len(d))]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return render.NormalizeVersion(image[i+1:])
	}
	return "latest"
}

func (r *Reconciler) invalidConfig(mesh *ambientv1alpha1.AmbientMesh, st *ambientv1alpha1.AmbientMeshStatus, reason, msg string) {
	if c := meta.FindStatusCondition(st.Conditions, ambientv1alpha1.ConditionDegraded); c == nil || c.Reason != reason || c.Message != truncate(msg) {
		r.Recorder.Eventf(mesh, nil, corev1.EventTypeWarning, reason, "Validate", "%s", msg)
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: ambientv1alpha1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: reason,
		Message: truncate(msg), ObservedGeneration: mesh.Generation,
	})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: ambientv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason,
		Message: "The mesh configuration is invalid: " + truncate(msg), ObservedGeneration: mesh.Generation,
	})
}

func (r *Reconciler) ensureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{}
	err := r.Client.Get(ctx, types.NamespacedName{Name: name}, ns)
	if err == nil {
		if !ns.DeletionTimestamp.IsZero() {
			return fmt.Errorf("namespace %s is being deleted; the mesh waits for it to be gone", name)
		}
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get namespace %s: %w", name, err)
	}
	if err := r.Client.Create(ctx, render.Namespace(name)); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

func (r *Reconciler) ensureGatewayClass(ctx context.Context, applier *render.Applier) error {
	gc := render.GatewayClass()
	if _, err := applier.Apply(ctx, nil, gc); err != nil {
		return err
	}
	live := &gatewayv1.GatewayClass{}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(gc), live); err != nil {
		return client.IgnoreNotFound(err)
	}
	before := live.Status.DeepCopy()
	meta.SetStatusCondition(&live.Status.Conditions, metav1.Condition{
		Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayClassReasonAccepted), ObservedGeneration: live.Generation,
		Message: "Gateways of this class run as ambient waypoints",
	})
	if equality.Semantic.DeepEqual(before, &live.Status) {
		return nil
	}
	if err := r.Client.Status().Update(ctx, live); err != nil {
		return fmt.Errorf("update GatewayClass %s status: %w", live.Name, err)
	}
	return nil
}

func (r *Reconciler) patchStatus(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh, st *ambientv1alpha1.AmbientMeshStatus) error {
	if equality.Semantic.DeepEqual(&mesh.Status, st) {
		return nil
	}
	patch := client.MergeFrom(mesh.DeepCopy())
	mesh.Status = *st
	if err := r.Client.Status().Patch(ctx, mesh, patch); err != nil {
		return fmt.Errorf("patch AmbientMesh %s status: %w", mesh.Name, err)
	}
	return nil
}

// finalize removes the cluster-scoped objects of the mesh, and the namespace if the operator created it;
// the namespaced objects go with their owner (the garbage collector) or with the namespace.
func (r *Reconciler) finalize(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh) error {
	if !controllerutil.ContainsFinalizer(mesh, render.MeshFinalizer) {
		return nil
	}
	applier := &render.Applier{Client: r.Client, Scheme: r.Scheme}
	objs := []client.Object{
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: render.XDSName}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: render.XDSName}},
	}
	if r.GatewayAPI {
		objs = append(objs, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: ambientv1alpha1.WaypointGatewayClass}})
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: mesh.Spec.Namespace}, ns); err == nil &&
		ns.Labels[render.LabelManagedBy] == render.ManagedByValue {
		objs = append(objs, ns)
	}
	for _, obj := range objs {
		if _, err := applier.DeleteIfExists(ctx, obj); err != nil {
			return fmt.Errorf("delete %T %s: %w", obj, obj.GetName(), err)
		}
	}
	patch := client.MergeFrom(mesh.DeepCopy())
	controllerutil.RemoveFinalizer(mesh, render.MeshFinalizer)
	if err := r.Client.Patch(ctx, mesh, patch); err != nil {
		return fmt.Errorf("remove finalizer from AmbientMesh %s: %w", mesh.Name, err)
	}
	ctrl.LoggerFrom(ctx).Info("Removed the mesh", "mesh", klog.KObj(mesh))
	return nil
}

func deadline(mesh *ambientv1alpha1.AmbientMesh) time.Duration {
	s := mesh.Spec.Upgrade.ProgressDeadlineSeconds
	if s == 0 {
		s = 600
	}
	return time.Duration(s) * time.Second
}

func truncate(s string) string {
	const limit = 1024
	if len(s) > limit {
		return s[:limit-3] + "..."
	}
	return s
}

// SetupWithManager registers the reconciler: it watches the mesh and everything it makes, and the
// waypoint Deployments whose rollout it waits for.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Now == nil {
		r.Now = time.Now
	}
	toMesh := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []ctrl.Request {
		return []ctrl.Request{{NamespacedName: types.NamespacedName{Name: ambientv1alpha1.AmbientMeshName}}}
	})
	managed := builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetLabels()[render.LabelManagedBy] == render.ManagedByValue
	}))
	b := ctrl.NewControllerManagedBy(mgr).
		Named("ambientmesh").
		For(&ambientv1alpha1.AmbientMesh{}).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.DaemonSet{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Watches(&rbacv1.ClusterRole{}, toMesh, managed).
		Watches(&rbacv1.ClusterRoleBinding{}, toMesh, managed).
		Watches(&corev1.Namespace{}, toMesh, managed).
		// Waypoint Deployments belong to their Waypoint; the mesh only watches their rollout.
		Watches(&appsv1.Deployment{}, toMesh, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetLabels()[render.LabelComponent] == "waypoint"
		})))
	b = b.Owns(pdbRef("", ""))
	if r.GatewayAPI {
		b = b.Watches(&gatewayv1.GatewayClass{}, toMesh, managed)
	}
	return b.Complete(r)
}
