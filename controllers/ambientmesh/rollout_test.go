package ambientmesh

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

var (
	v1 = render.Component{Version: "0.1.0", Image: "reg/dp:v0.1.0"}
	v2 = render.Component{Version: "0.1.1", Image: "reg/dp:v0.1.1"}
)

func running(c render.Component, desired, updated, available int32, rolledOut bool) observed {
	return observed{exists: true, comp: c, desired: desired, updated: updated, ready: available, available: available, rolledOut: rolledOut}
}

func TestPlanRollout(t *testing.T) {
	done := func(c render.Component) observed { return running(c, 3, 3, 3, true) }
	noWaypoints := observed{exists: true, none: true, rolledOut: true}
	cases := []struct {
		name                 string
		installing           bool
		xds, node, waypoints observed
		phase                ambientv1alpha1.RolloutPhase
		xdsGets, nodeGets    render.Component
		waypointsMove        bool
	}{
		{name: "first install renders everything at the target", installing: true,
			waypoints: noWaypoints, phase: ambientv1alpha1.RolloutInstalling, xdsGets: v2, nodeGets: v2, waypointsMove: true},
		{name: "install finishes when everything is available", installing: true,
			xds: done(v2), node: done(v2), waypoints: noWaypoints, phase: ambientv1alpha1.RolloutIdle, xdsGets: v2, nodeGets: v2, waypointsMove: true},
		{name: "steady state", xds: done(v2), node: done(v2), waypoints: done(v2),
			phase: ambientv1alpha1.RolloutIdle, xdsGets: v2, nodeGets: v2, waypointsMove: true},
		{name: "new version: xDS server first, node proxies stay", xds: done(v1), node: done(v1), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v2, nodeGets: v1},
		{name: "xDS server rolling: nodes still wait", xds: running(v2, 2, 1, 2, false), node: done(v1), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v2, nodeGets: v1},
		{name: "xDS template updated but controller has not observed it", xds: running(v2, 2, 2, 2, false), node: done(v1), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v2, nodeGets: v1},
		{name: "xDS available: node proxies move", xds: done(v2), node: done(v1), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutNodeProxy, xdsGets: v2, nodeGets: v2},
		{name: "node proxies rolling: waypoints wait", xds: done(v2), node: running(v2, 3, 1, 3, false), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutNodeProxy, xdsGets: v2, nodeGets: v2},
		{name: "node proxies done: waypoints move", xds: done(v2), node: done(v2), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutWaypoints, xdsGets: v2, nodeGets: v2, waypointsMove: true},
		{name: "waypoints with mixed versions are not done", xds: done(v2), node: done(v2), waypoints: observed{exists: true, mixed: true, comp: v2, rolledOut: true},
			phase: ambientv1alpha1.RolloutWaypoints, xdsGets: v2, nodeGets: v2, waypointsMove: true},
		{name: "rollback mid-node-rollout: xDS server goes back first", xds: done(v2), node: running(v2, 3, 1, 3, false), waypoints: done(v1),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v1, nodeGets: v2},
		{name: "deleted xDS Deployment is recreated at the target", node: done(v2), waypoints: done(v2),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v2, nodeGets: v2},
		{name: "image change without version change is a rollout", xds: done(render.Component{Version: "0.1.1", Image: "mirror/dp:v0.1.1"}), node: done(v2), waypoints: done(v2),
			phase: ambientv1alpha1.RolloutXDS, xdsGets: v2, nodeGets: v2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			target := v2
			if tc.name == "rollback mid-node-rollout: xDS server goes back first" {
				target = v1
			}
			p := planRollout(tc.installing, target, tc.xds, tc.node, tc.waypoints)
			g.Expect(p.phase).To(Equal(tc.phase))
			g.Expect(p.xds).To(Equal(tc.xdsGets))
			g.Expect(p.node).To(Equal(tc.nodeGets))
			g.Expect(p.waypointsMove).To(Equal(tc.waypointsMove))
			if p.phase != ambientv1alpha1.RolloutIdle {
				g.Expect(p.stage).NotTo(BeNil())
				g.Expect(p.message).To(HavePrefix("Waiting for the "))
			}
		})
	}
}

func TestStalled(t *testing.T) {
	g := NewWithT(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	isStalled, left := stalled(start, time.Minute, start.Add(30*time.Second))
	g.Expect(isStalled).To(BeFalse())
	g.Expect(left).To(Equal(30 * time.Second))
	isStalled, _ = stalled(start, time.Minute, start.Add(61*time.Second))
	g.Expect(isStalled).To(BeTrue())
}

func TestImageTag(t *testing.T) {
	g := NewWithT(t)
	g.Expect(imageTag("reg:5000/dp:v1.2.3")).To(Equal("1.2.3"))
	g.Expect(imageTag("reg:5000/dp")).To(Equal("latest"))
	g.Expect(imageTag("reg/dp@sha256:0123456789abcdef0123")).To(Equal("digest-0123456789ab"))
}
