package ambientmesh

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// trackRollout moves the rollout state in the status: it starts a rollout when the target changes, notes
// progress, stops the clock when a stage makes no progress within the deadline, and finishes it when every
// component is done. It emits an Event on each transition a user acts on.
func (r *Reconciler) trackRollout(mesh *ambientv1alpha1.AmbientMesh, st *ambientv1alpha1.AmbientMeshStatus, p plan, target render.Component, now time.Time) {
	ro := st.Rollout
	t := metav1.NewTime(now)
	newTarget := ro == nil || ro.ToVersion != target.Version || ro.TargetImage != target.Image

	if p.phase == ambientv1alpha1.RolloutIdle {
		switch {
		case ro == nil || newTarget:
			// Nothing had to move (the target equals what runs).
			st.Rollout = &ambientv1alpha1.RolloutStatus{Phase: ambientv1alpha1.RolloutIdle, ToVersion: target.Version,
				TargetImage: target.Image, CompletionTime: &t, Message: "Every component runs " + target.Version}
		case ro.Phase != ambientv1alpha1.RolloutIdle:
			ro.Phase, ro.Stage = ambientv1alpha1.RolloutIdle, ""
			ro.CompletionTime = &t
			ro.Message = "Every component runs " + target.Version
			if ro.StartTime != nil {
				rolloutDuration.Observe(now.Sub(ro.StartTime.Time).Seconds())
			}
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonRolloutFinished, "Rollout",
				"Every component runs version %s (image %s)", target.Version, target.Image)
		}
		st.Version = target.Version
		rolloutInProgress.Set(0)
		return
	}

	rolloutInProgress.Set(1)
	if newTarget || ro.Phase == ambientv1alpha1.RolloutIdle {
		st.Rollout = &ambientv1alpha1.RolloutStatus{
			Phase: p.phase, Stage: p.phase, FromVersion: st.Version, ToVersion: target.Version, TargetImage: target.Image,
			StartTime: &t, LastProgressTime: &t, Message: p.message,
		}
		switch {
		case ro != nil && ro.Phase != ambientv1alpha1.RolloutIdle:
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonRolloutStarted, "Rollout",
				"The target changed from %s to %s before the rollout finished: rolling to %s (image %s) in the same order, xDS server first",
				ro.ToVersion, target.Version, target.Version, target.Image)
		case p.phase == ambientv1alpha1.RolloutInstalling:
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonInstalling, "Rollout",
				"Installing data-plane version %s (image %s)", target.Version, target.Image)
		default:
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonRolloutStarted, "Rollout",
				"Rolling out version %s (image %s) from %s: xDS server, then node proxies, then waypoints", target.Version, target.Image, versionOrNone(st.Version))
		}
		return
	}

	wasStalled := ro.Phase == ambientv1alpha1.RolloutStalled
	if ro.Stage != p.phase || progressed(findComponent(st.Components, componentOf(p.phase)), p.stage) {
		ro.LastProgressTime = &t
		if wasStalled {
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonRolloutResumed, "Rollout",
				"The rollout to %s made progress again: %s", target.Version, p.message)
		}
	}
	ro.Phase, ro.Stage, ro.Message = p.phase, p.phase, p.message
	if isStalled, _ := stalled(ro.LastProgressTime.Time, deadline(mesh), now); isStalled {
		ro.Phase = ambientv1alpha1.RolloutStalled
		ro.Message = fmt.Sprintf("No progress for %s (spec.upgrade.progressDeadlineSeconds); the rollout stopped at stage %s. %s. "+
			"Fix the failing pods, or set spec.version back to %s to roll back", deadline(mesh), p.phase, p.message, versionOrNone(ro.FromVersion))
		if !wasStalled {
			r.Recorder.Eventf(mesh, nil, corev1.EventTypeWarning, ReasonRolloutStalled, "Rollout", "%s", ro.Message)
		}
	}
}

func versionOrNone(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

func componentOf(phase ambientv1alpha1.RolloutPhase) string {
	switch phase {
	case ambientv1alpha1.RolloutXDS:
		return ComponentXDS
	case ambientv1alpha1.RolloutNodeProxy:
		return ComponentNodeProxy
	case ambientv1alpha1.RolloutWaypoints:
		return ComponentWaypoints
	}
	return ""
}

func findComponent(cs []ambientv1alpha1.ComponentStatus, name string) *ambientv1alpha1.ComponentStatus {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// computeStatus writes what the components run and the conditions. Ready is true only when every
// component runs the target and is available, and no rollout is under way.
func (r *Reconciler) computeStatus(mesh *ambientv1alpha1.AmbientMesh, st *ambientv1alpha1.AmbientMeshStatus, target render.Component, xds, node, waypoints observed) {
	gen := mesh.Generation
	st.Components = []ambientv1alpha1.ComponentStatus{
		componentStatus(ComponentXDS, target, xds),
		componentStatus(ComponentNodeProxy, target, node),
		componentStatus(ComponentWaypoints, target, waypoints),
	}
	st.Nodes = fmt.Sprintf("%d/%d", node.ready, node.desired)
	for _, c := range st.Components {
		componentsReady.WithLabelValues(c.Name).Set(float64(c.Ready))
		componentsDesired.WithLabelValues(c.Name).Set(float64(c.Desired))
	}

	phase := st.Rollout.Phase
	available := xds.done(target) && xds.available > 0 && node.done(target) && waypoints.done(target)
	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	switch phase {
	case ambientv1alpha1.RolloutIdle:
		set(ambientv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonRolloutFinished, st.Rollout.Message)
	case ambientv1alpha1.RolloutStalled:
		set(ambientv1alpha1.ConditionProgressing, metav1.ConditionFalse, ReasonRolloutStalled, st.Rollout.Message)
	case ambientv1alpha1.RolloutInstalling:
		set(ambientv1alpha1.ConditionProgressing, metav1.ConditionTrue, ReasonInstalling, st.Rollout.Message)
	default:
		set(ambientv1alpha1.ConditionProgressing, metav1.ConditionTrue, ReasonRolloutInProgress,
			fmt.Sprintf("Rolling out %s, stage %s: %s", target.Version, phase, st.Rollout.Message))
	}

	switch {
	case phase == ambientv1alpha1.RolloutStalled:
		set(ambientv1alpha1.ConditionDegraded, metav1.ConditionTrue, ReasonRolloutStalled, st.Rollout.Message)
		set(ambientv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonRolloutStalled, "The rollout is stalled")
	case phase != ambientv1alpha1.RolloutIdle:
		set(ambientv1alpha1.ConditionDegraded, metav1.ConditionFalse, ReasonRolloutInProgress, "No problem detected")
		set(ambientv1alpha1.ConditionReady, metav1.ConditionFalse, reasonForPhase(phase), st.Rollout.Message)
	case !available:
		msg := fmt.Sprintf("Not every component is available: xDS server %d/%d, node proxies %d/%d, waypoints %d/%d",
			xds.available, xds.desired, node.available, node.desired, waypoints.available, waypoints.desired)
		set(ambientv1alpha1.ConditionDegraded, metav1.ConditionTrue, ReasonUnavailable, msg)
		set(ambientv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonUnavailable, msg)
	default:
		set(ambientv1alpha1.ConditionDegraded, metav1.ConditionFalse, ReasonAvailable, "No problem detected")
		set(ambientv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonAvailable,
			fmt.Sprintf("Every component runs %s and is available", target.Version))
	}
}

func reasonForPhase(p ambientv1alpha1.RolloutPhase) string {
	if p == ambientv1alpha1.RolloutInstalling {
		return ReasonInstalling
	}
	return ReasonRolloutInProgress
}

func componentStatus(name string, target render.Component, o observed) ambientv1alpha1.ComponentStatus {
	cs := ambientv1alpha1.ComponentStatus{
		Name: name, TargetVersion: target.Version,
		Desired: o.desired, Updated: o.updated, Ready: o.ready, Available: o.available,
	}
	if o.exists && !o.mixed && !o.none && o.rolledOut {
		cs.CurrentVersion = o.comp.Version
	}
	if o.none {
		cs.CurrentVersion = target.Version
	}
	return cs
}
