package ambientmesh

import (
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// observed is what the operator sees of one component (the xDS Deployment, the node DaemonSet, or all
// waypoint Deployments together).
type observed struct {
	exists bool
	// none: there is nothing of this component to wait for (no waypoints).
	none bool
	// comp is what the component's pod template runs: version and image.
	comp render.Component
	// mixed is true when some of the component's objects run other versions (only for waypoints).
	mixed                              bool
	desired, updated, ready, available int32
	// rolledOut: the controller has seen the latest template, every pod runs it and is available.
	rolledOut bool
}

func (o observed) at(target render.Component) bool {
	return o.exists && !o.mixed && o.comp == target
}

func (o observed) done(target render.Component) bool {
	return o.none || (o.at(target) && o.rolledOut)
}

func templateComponent(labels, annotations map[string]string) render.Component {
	return render.Component{Version: labels[render.LabelDataplaneVersion], Image: annotations[render.AnnotationImage]}
}

func observeDeployment(d *appsv1.Deployment) observed {
	if d == nil {
		return observed{}
	}
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	s := d.Status
	return observed{
		exists:    true,
		comp:      templateComponent(d.Spec.Template.Labels, d.Annotations),
		desired:   replicas,
		updated:   s.UpdatedReplicas,
		ready:     s.ReadyReplicas,
		available: s.AvailableReplicas,
		rolledOut: s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == replicas &&
			s.Replicas == replicas && s.AvailableReplicas == replicas,
	}
}

func observeDaemonSet(ds *appsv1.DaemonSet) observed {
	if ds == nil {
		return observed{}
	}
	s := ds.Status
	return observed{
		exists:    true,
		comp:      templateComponent(ds.Spec.Template.Labels, ds.Annotations),
		desired:   s.DesiredNumberScheduled,
		updated:   s.UpdatedNumberScheduled,
		ready:     s.NumberReady,
		available: s.NumberAvailable,
		rolledOut: s.ObservedGeneration >= ds.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
			s.NumberAvailable == s.DesiredNumberScheduled && s.NumberUnavailable == 0,
	}
}

// observeWaypoints sums the waypoint Deployments that follow the mesh version.
func observeWaypoints(deps []appsv1.Deployment) observed {
	o := observed{exists: true, rolledOut: true, none: len(deps) == 0}
	for i := range deps {
		d := observeDeployment(&deps[i])
		if i == 0 {
			o.comp = d.comp
		} else if d.comp != o.comp {
			o.mixed = true
		}
		o.desired += d.desired
		o.updated += d.updated
		o.ready += d.ready
		o.available += d.available
		o.rolledOut = o.rolledOut && d.rolledOut
	}
	return o
}

// plan is what to render now and where the rollout stands.
type plan struct {
	phase ambientv1alpha1.RolloutPhase
	// xds and node are what their templates get now.
	xds, node render.Component
	// waypointsMove: waypoint Deployments may move to the target (the mesh publishes it in its status).
	waypointsMove bool
	// stage is the component the rollout waits for; message says for what.
	stage   *observed
	message string
}

// planRollout decides the safe order of an upgrade: the xDS server first (until it is available), then
// the node proxies, then the waypoints. A component moves only when every component before it runs the
// target and is available. On first installation (nothing exists yet) everything starts at the target.
// Setting the old version back is just another target: the same order rolls it back.
func planRollout(installing bool, target render.Component, xds, node, waypoints observed) plan {
	if installing {
		p := plan{phase: ambientv1alpha1.RolloutInstalling, xds: target, node: target, waypointsMove: true}
		switch {
		case !xds.done(target):
			p.stage, p.message = &xds, waitMessage("xDS server", xds)
		case !node.done(target):
			p.stage, p.message = &node, waitMessage("node proxies", node)
		case !waypoints.done(target):
			p.stage, p.message = &waypoints, waitMessage("waypoints", waypoints)
		default:
			p.phase = ambientv1alpha1.RolloutIdle
		}
		return p
	}
	nodeNow := target
	if node.exists {
		nodeNow = node.comp
	}
	switch {
	case !xds.done(target):
		return plan{phase: ambientv1alpha1.RolloutXDS, xds: target, node: nodeNow, stage: &xds,
			message: waitMessage("xDS server", xds)}
	case !node.done(target):
		return plan{phase: ambientv1alpha1.RolloutNodeProxy, xds: target, node: target, stage: &node,
			message: waitMessage("node proxies", node)}
	case !waypoints.done(target):
		return plan{phase: ambientv1alpha1.RolloutWaypoints, xds: target, node: target, waypointsMove: true,
			stage: &waypoints, message: waitMessage("waypoints", waypoints)}
	}
	return plan{phase: ambientv1alpha1.RolloutIdle, xds: target, node: target, waypointsMove: true}
}

func waitMessage(what string, o observed) string {
	return fmt.Sprintf("Waiting for the %s: %d/%d updated, %d/%d available", what, o.updated, o.desired, o.available, o.desired)
}

// progressed reports whether a stage moved since the last status: more pods updated or available.
func progressed(prev *ambientv1alpha1.ComponentStatus, now *observed) bool {
	if prev == nil {
		return true
	}
	return now.updated > prev.Updated || now.available > prev.Available || now.desired != prev.Desired
}

// stalled reports whether the rollout went longer than the deadline without progress, and how long is
// left otherwise.
func stalled(lastProgress time.Time, deadline time.Duration, now time.Time) (bool, time.Duration) {
	left := lastProgress.Add(deadline).Sub(now)
	return left <= 0, left
}

// idle reports whether the last rollout finished and targeted the same version and image.
func idle(ro *ambientv1alpha1.RolloutStatus, target render.Component) bool {
	return ro != nil && ro.Phase == ambientv1alpha1.RolloutIdle && ro.ToVersion == target.Version && ro.TargetImage == target.Image
}

// moved reports whether an existing component's template runs something other than the target.
func moved(target render.Component, xds, node, waypoints observed) bool {
	differs := func(o observed) bool { return o.exists && !o.none && (o.mixed || o.comp != target) }
	return differs(xds) || differs(node) || differs(waypoints)
}
