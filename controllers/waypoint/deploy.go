// Package waypoint reconciles Waypoints and Gateways of the ambient-waypoint class into waypoint proxies:
// ServiceAccount, Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler. Both kinds share
// one implementation (deploy); each writes its own kind of status.
package waypoint

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// Reasons of waypoint conditions (Gateway API reasons where one fits).
const (
	ReasonAccepted        = "Accepted"
	ReasonNoMesh          = "NoMesh"
	ReasonNotInMesh       = "NamespaceNotInMesh"
	ReasonNameConflict    = "NameConflict"
	ReasonInvalidMesh     = "InvalidMeshConfig"
	ReasonProgrammed      = "Programmed"
	ReasonPending         = "Pending"
	ReasonReady           = "Ready"
	ReasonRolloutUnderway = "RolloutInProgress"
)

// problem is a reason the waypoint cannot be deployed, for the Accepted condition.
type problem struct{ reason, message string }

// observation is what a waypoint's status reports.
type observation struct {
	replicas, ready, updated int32
	version                  string
	rolledOut                bool
	clusterIP                string
	hostname                 string
}

// deployer holds what Waypoint and Gateway reconciliation share.
type deployer struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Registry string
}

// check finds the mesh and verifies the waypoint's namespace is covered by it.
func (d *deployer) check(ctx context.Context, namespace string) (*ambientv1alpha1.AmbientMesh, *problem, error) {
	mesh := &ambientv1alpha1.AmbientMesh{}
	if err := d.Client.Get(ctx, types.NamespacedName{Name: ambientv1alpha1.AmbientMeshName}, mesh); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &problem{ReasonNoMesh, "There is no AmbientMesh \"default\": create it first, then the waypoint is deployed"}, nil
		}
		return nil, nil, fmt.Errorf("get AmbientMesh: %w", err)
	}
	ns := &corev1.Namespace{}
	if err := d.Client.Get(ctx, types.NamespacedName{Name: namespace}, ns); err != nil {
		return nil, nil, fmt.Errorf("get namespace %s: %w", namespace, err)
	}
	if !namespaceEnrolled(mesh, ns) {
		return mesh, &problem{ReasonNotInMesh, fmt.Sprintf(
			"Namespace %s is not in the mesh: label it %s=%s (or match the AmbientMesh's spec.enrollment.namespaceSelector) so that its workloads can use a waypoint",
			namespace, ambientv1alpha1.DataplaneLabel, ambientv1alpha1.DataplaneEnabled)}, nil
	}
	return mesh, nil, nil
}

// namespaceEnrolled applies the mesh's namespace enrollment selector, and Istio's label when accepted.
func namespaceEnrolled(mesh *ambientv1alpha1.AmbientMesh, ns *corev1.Namespace) bool {
	e := mesh.Spec.Enrollment
	if e.AcceptIstioLabels == nil || *e.AcceptIstioLabels {
		if ns.Labels[ambientv1alpha1.IstioDataplaneModeLabel] == ambientv1alpha1.IstioDataplaneModeAmbient {
			return true
		}
	}
	sel := e.NamespaceSelector
	if sel == nil {
		sel = &metav1.LabelSelector{MatchLabels: map[string]string{ambientv1alpha1.DataplaneLabel: ambientv1alpha1.DataplaneEnabled}}
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(ns.Labels))
}

// component decides what a waypoint runs: a new waypoint starts at the mesh's target; an existing one
// moves to it only when the mesh rollout reached the waypoints stage (after the xDS server and the node
// proxies), and otherwise keeps what it runs.
func (d *deployer) component(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh, name, namespace, imageOverride string) (render.Component, error) {
	target, err := meshTarget(d.Registry, mesh)
	if err != nil {
		return render.Component{}, err
	}
	if imageOverride != "" {
		return render.Component{Version: target.Version, Image: imageOverride}, nil
	}
	live := &appsv1.Deployment{}
	if err := d.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, live); err != nil {
		if apierrors.IsNotFound(err) {
			return target, nil
		}
		return render.Component{}, fmt.Errorf("get waypoint Deployment %s/%s: %w", namespace, name, err)
	}
	if waypointsMayMove(mesh) {
		return target, nil
	}
	current := render.Component{Version: live.Spec.Template.Labels[render.LabelDataplaneVersion], Image: live.Annotations[render.AnnotationImage]}
	if current.Version == "" || current.Image == "" {
		return target, nil
	}
	return current, nil
}

// meshTarget is the version the mesh rolls out: the one its rollout status names, else its spec.
func meshTarget(registry string, mesh *ambientv1alpha1.AmbientMesh) (render.Component, error) {
	if ro := mesh.Status.Rollout; ro != nil && ro.ToVersion != "" && ro.TargetImage != "" {
		return render.Component{Version: ro.ToVersion, Image: ro.TargetImage}, nil
	}
	image, err := render.ResolveImage(registry, mesh.Spec.Version, mesh.Spec.Image)
	if err != nil {
		return render.Component{}, err
	}
	return render.Component{Version: render.NormalizeVersion(mesh.Spec.Version), Image: image}, nil
}

func waypointsMayMove(mesh *ambientv1alpha1.AmbientMesh) bool {
	ro := mesh.Status.Rollout
	if ro == nil {
		return true
	}
	switch ro.Phase {
	case ambientv1alpha1.RolloutIdle, ambientv1alpha1.RolloutInstalling, ambientv1alpha1.RolloutWaypoints:
		return true
	case ambientv1alpha1.RolloutStalled:
		return ro.Stage == ambientv1alpha1.RolloutWaypoints || ro.Stage == ambientv1alpha1.RolloutInstalling
	}
	return false
}

// conflict reports a Deployment of the same name that belongs to another owner (a Waypoint and a Gateway
// of the same name in one namespace).
func (d *deployer) conflict(ctx context.Context, owner client.Object) (*problem, error) {
	live := &appsv1.Deployment{}
	if err := d.Client.Get(ctx, client.ObjectKeyFromObject(owner), live); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	ref := metav1.GetControllerOf(live)
	if ref == nil || ref.UID == owner.GetUID() {
		return nil, nil
	}
	return &problem{ReasonNameConflict, fmt.Sprintf("Deployment %s/%s already belongs to %s %s: rename this waypoint",
		live.Namespace, live.Name, ref.Kind, ref.Name)}, nil
}

// deploy applies a waypoint's objects, removes the optional ones it no longer wants, and observes it.
func (d *deployer) deploy(ctx context.Context, owner client.Object, mesh *ambientv1alpha1.AmbientMesh, in render.WaypointInputs, rootPEM string) (observation, error) {
	applier := &render.Applier{Client: d.Client, Scheme: d.Scheme}
	if _, err := applier.Apply(ctx, mesh, render.RootCert(in.Namespace, rootPEM)); err != nil {
		return observation{}, err
	}
	for _, obj := range render.Waypoint(in) {
		if _, err := applier.Apply(ctx, owner, obj); err != nil {
			return observation{}, err
		}
	}
	ref := metav1.ObjectMeta{Namespace: in.Namespace, Name: in.Name}
	if in.Spec.Disruption.Enabled != nil && !*in.Spec.Disruption.Enabled {
		if _, err := applier.DeleteIfExists(ctx, &policyv1.PodDisruptionBudget{ObjectMeta: ref}); err != nil {
			return observation{}, err
		}
	}
	if in.Spec.Autoscaling == nil {
		if _, err := applier.DeleteIfExists(ctx, &autoscalingv2.HorizontalPodAutoscaler{ObjectMeta: ref}); err != nil {
			return observation{}, err
		}
	}
	return d.observe(ctx, in.Namespace, in.Name)
}

func (d *deployer) observe(ctx context.Context, namespace, name string) (observation, error) {
	var o observation
	dep := &appsv1.Deployment{}
	if err := d.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, dep); err != nil {
		return o, client.IgnoreNotFound(err)
	}
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	s := dep.Status
	o.replicas, o.ready, o.updated = want, s.ReadyReplicas, s.UpdatedReplicas
	o.rolledOut = s.ObservedGeneration >= dep.Generation && s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want
	if o.rolledOut {
		o.version = dep.Spec.Template.Labels[render.LabelDataplaneVersion]
	}
	svc := &corev1.Service{}
	if err := d.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, svc); err != nil {
		return o, client.IgnoreNotFound(err)
	}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		o.clusterIP = ip
	}
	o.hostname = fmt.Sprintf("%s.%s.svc.cluster.local", name, namespace)
	return o, nil
}

// rootCert reads the public CA certificate the mesh published in its namespace.
func (d *deployer) rootCert(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh) (string, error) {
	cm := &corev1.ConfigMap{}
	if err := d.Client.Get(ctx, types.NamespacedName{Namespace: mesh.Spec.Namespace, Name: render.RootCertConfigMap}, cm); err != nil {
		return "", fmt.Errorf("the mesh has not published its root certificate yet (ConfigMap %s/%s): %w", mesh.Spec.Namespace, render.RootCertConfigMap, err)
	}
	return cm.Data[render.RootCertKey], nil
}
