package authz_test

import (
	"slices"
	"testing"

	. "github.com/onsi/gomega"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
)

// selectionPolicies is a mesh snapshot with policies of every scope.
func selectionPolicies() []*api.Authorization {
	fromBackend := when(&api.Match{Namespaces: []*api.StringMatch{exact("backend")}})
	return []*api.Authorization{
		policy("istio-system/deny-plaintext", api.Scope_GLOBAL, api.Action_DENY,
			when(&api.Match{NotPrincipals: []*api.StringMatch{presence()}})),
		policy("shop/ns-allow", api.Scope_NAMESPACE, api.Action_ALLOW, fromBackend),
		policy("other/ns-allow", api.Scope_NAMESPACE, api.Action_ALLOW, fromBackend),
		policy("shop/sel", api.Scope_WORKLOAD_SELECTOR, api.Action_ALLOW,
			when(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}})),
		policy("istio-system/sel-root", api.Scope_WORKLOAD_SELECTOR, api.Action_DENY,
			when(&api.Match{DestinationPorts: []uint32{22}})),
		policy("shop/svc", api.Scope_SERVICE, api.Action_ALLOW,
			when(&api.Match{Principals: []*api.StringMatch{suffix("/sa/web")}})),
		waypointPolicy("shop/wp-relative", "waypoint", api.Action_DENY,
			when(&api.Match{DestinationPorts: []uint32{9999}})),
		waypointPolicy("other/wp-absolute", "shop/waypoint", api.Action_ALLOW,
			when(&api.Match{Namespaces: []*api.StringMatch{exact("backend")}})),
		waypointPolicy("shop/wp-other", "other-waypoint", api.Action_ALLOW, rule()),
	}
}

func TestSetSelection(t *testing.T) {
	set := authz.NewSet(mustCompile(t, selectionPolicies()...))
	forWorkload := func(ns string, listed ...string) func() []*authz.Policy {
		return func() []*authz.Policy { return set.ForWorkload(ns, listed, nil) }
	}
	forWaypoint := func(wp, svcNS string, listed ...string) func() []*authz.Policy {
		return func() []*authz.Policy { return set.ForWaypoint(wp, svcNS, listed, nil) }
	}
	cases := []struct {
		name    string
		sel     func() []*authz.Policy
		want    []string
		conn    *authz.Connection
		allowed bool
	}{
		{
			name: "workload: GLOBAL and NAMESPACE of its namespace",
			sel:  forWorkload("shop"),
			want: []string{"istio-system/deny-plaintext", "shop/ns-allow"},
			conn: conn(), allowed: false, // web is in frontend; only backend is allowed
		},
		{
			name: "workload: a relative WORKLOAD_SELECTOR reference",
			sel:  forWorkload("shop", "sel"),
			want: []string{"istio-system/deny-plaintext", "shop/ns-allow", "shop/sel"},
			conn: conn(), allowed: true,
		},
		{
			name: "workload: a <ns>/<name> reference to the root namespace, listed twice",
			sel:  forWorkload("shop", "istio-system/sel-root", "sel", "shop/sel"),
			want: []string{"istio-system/deny-plaintext", "shop/ns-allow", "istio-system/sel-root", "shop/sel"},
			conn: conn(toPort(22)), allowed: false,
		},
		{
			name: "workload: a relative reference resolves in the workload's namespace",
			sel:  forWorkload("other", "sel"),
			want: []string{"istio-system/deny-plaintext", "other/ns-allow"},
			conn: conn(from(api1)), allowed: true,
		},
		{
			name: "workload: a cross-namespace reference",
			sel:  forWorkload("other", "shop/sel"),
			want: []string{"istio-system/deny-plaintext", "other/ns-allow", "shop/sel"},
			conn: conn(), allowed: true,
		},
		{
			name: "workload: unknown names and policies of other scopes are ignored",
			sel:  forWorkload("shop", "missing", "svc", "ns-allow", "wp-relative", "a/b/c", ""),
			want: []string{"istio-system/deny-plaintext", "shop/ns-allow"},
			conn: conn(from(api1)), allowed: true,
		},
		{
			name: "workload: in a namespace without policies, only GLOBAL",
			sel:  forWorkload("empty"),
			want: []string{"istio-system/deny-plaintext"},
			conn: conn(from(plaintext)), allowed: false,
		},
		{
			name: "workload: GLOBAL DENY only: mTLS allowed",
			sel:  forWorkload("empty"),
			want: []string{"istio-system/deny-plaintext"},
			conn: conn(), allowed: true,
		},
		{
			name: "waypoint: WAYPOINT policies by relative and <ns>/<name> reference",
			sel:  forWaypoint("shop/waypoint", "shop"),
			want: []string{"shop/wp-relative", "other/wp-absolute"},
			conn: conn(from(api1)), allowed: true,
		},
		{
			name: "waypoint: WAYPOINT DENY",
			sel:  forWaypoint("shop/waypoint", "shop"),
			want: []string{"shop/wp-relative", "other/wp-absolute"},
			conn: conn(from(api1), toPort(9999)), allowed: false,
		},
		{
			name: "waypoint: plus the SERVICE policies of the destination service",
			sel:  forWaypoint("shop/waypoint", "shop", "svc"),
			want: []string{"shop/wp-relative", "other/wp-absolute", "shop/svc"},
			conn: conn(), allowed: true,
		},
		{
			name: "waypoint: a SERVICE policy by <ns>/<name> from a service of another namespace",
			sel:  forWaypoint("shop/other-waypoint", "elsewhere", "shop/svc", "svc"),
			want: []string{"shop/wp-other", "shop/svc"},
			conn: conn(from(plaintext)), allowed: true,
		},
		{
			name: "waypoint: WORKLOAD_SELECTOR, NAMESPACE and GLOBAL policies are not the waypoint's",
			sel:  forWaypoint("shop/waypoint", "shop", "sel", "ns-allow", "istio-system/deny-plaintext"),
			want: []string{"shop/wp-relative", "other/wp-absolute"},
			conn: conn(), allowed: false,
		},
		{
			name: "waypoint: unknown waypoint",
			sel:  forWaypoint("shop/nope", "shop"),
			want: []string{},
			conn: conn(from(plaintext)), allowed: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			sel := tc.sel()
			g.Expect(keys(sel)).To(Equal(tc.want))
			g.Expect(authz.Evaluate(sel, tc.conn).Allowed).To(Equal(tc.allowed))
		})
	}
}

func TestSetSelectionAppendsWithoutAllocating(t *testing.T) {
	g := NewWithT(t)
	set := authz.NewSet(mustCompile(t, selectionPolicies()...))
	buf := make([]*authz.Policy, 0, 16)
	listed := []string{"istio-system/sel-root", "sel"}
	svcListed := []string{"svc"}
	g.Expect(testing.AllocsPerRun(100, func() {
		buf = set.ForWorkload("shop", listed, buf[:0])
	})).To(BeZero())
	g.Expect(buf).To(HaveLen(4))
	g.Expect(testing.AllocsPerRun(100, func() {
		buf = set.ForWaypoint("shop/waypoint", "shop", svcListed, buf[:0])
	})).To(BeZero())
	g.Expect(buf).To(HaveLen(3))

	// Appends after what is already in dst.
	first := buf[0]
	out := set.ForWorkload("empty", nil, buf[:1])
	g.Expect(out[0]).To(BeIdenticalTo(first))
	g.Expect(keys(out[1:])).To(Equal([]string{"istio-system/deny-plaintext"}))
}

func TestSetAccessors(t *testing.T) {
	g := NewWithT(t)
	ps := mustCompile(t,
		allow("ns/a", rule()),
		deny("ns/b"),
		allow("ns/a", when(&api.Match{DestinationPorts: []uint32{80}})), // replaces the first ns/a
	)
	set := authz.NewSet([]*authz.Policy{ps[0], nil, ps[1], ps[2]})
	g.Expect(set.Len()).To(Equal(2))
	g.Expect(set.Get("ns/a")).To(BeIdenticalTo(ps[2]))
	g.Expect(set.Get("ns/b")).To(BeIdenticalTo(ps[1]))
	g.Expect(set.Get("ns/c")).To(BeNil())
	g.Expect(slices.Collect(set.All())).To(Equal([]*authz.Policy{ps[2], ps[1]}))
	g.Expect(keys(set.ForWorkload("any", nil, nil))).To(Equal([]string{"ns/a", "ns/b"}))
	for range set.All() {
		break // stopping early is fine
	}

	var none *authz.Set
	g.Expect(none.Len()).To(BeZero())
	g.Expect(none.Get("ns/a")).To(BeNil())
	g.Expect(slices.Collect(none.All())).To(BeEmpty())
	g.Expect(none.ForWorkload("ns", []string{"a"}, nil)).To(BeEmpty())
	g.Expect(none.ForWaypoint("ns/wp", "ns", []string{"a"}, nil)).To(BeEmpty())
	g.Expect(authz.Evaluate(none.ForWorkload("ns", nil, nil), conn()).Allowed).To(BeTrue())
}

func TestPolicyAccessors(t *testing.T) {
	g := NewWithT(t)
	ps := mustCompile(t,
		waypointPolicy("shop/wp", "waypoint", api.Action_DENY),
		waypointPolicy("shop/wp2", "mesh/waypoint", api.Action_ALLOW),
		policy("shop/svc", api.Scope_SERVICE, api.Action_ALLOW),
	)
	g.Expect(ps[0].Key()).To(Equal("shop/wp"))
	g.Expect(ps[0].Name()).To(Equal("wp"))
	g.Expect(ps[0].Namespace()).To(Equal("shop"))
	g.Expect(ps[0].Scope()).To(Equal(api.Scope_WAYPOINT))
	g.Expect(ps[0].Action()).To(Equal(api.Action_DENY))
	g.Expect(ps[0].Waypoint()).To(Equal("shop/waypoint"))
	g.Expect(ps[1].Waypoint()).To(Equal("mesh/waypoint"))
	g.Expect(ps[2].Waypoint()).To(BeEmpty())
}

// TestRevalidation shows how a proxy re-checks an open connection when the policies change.
func TestRevalidation(t *testing.T) {
	g := NewWithT(t)
	open := *conn() // what the proxy keeps per open connection
	listed := []string{"sel"}

	oldPolicies := mustCompile(t, selectionPolicies()...)
	oldSet := authz.NewSet(oldPolicies)
	oldSel := oldSet.ForWorkload("shop", listed, nil)
	g.Expect(authz.Evaluate(oldSel, &open).Allowed).To(BeTrue())

	// An unrelated change: the xDS client keeps the compiled policies of unchanged resources.
	unrelated := mustCompile(t, policy("elsewhere/x", api.Scope_NAMESPACE, api.Action_ALLOW, rule()))
	sameSet := authz.NewSet(append(slices.Clone(oldPolicies), unrelated...))
	g.Expect(authz.SamePolicies(oldSel, sameSet.ForWorkload("shop", listed, nil))).To(BeTrue())

	// shop/sel now only allows backend: the open connection from frontend must be closed.
	changed := mustCompile(t, policy("shop/sel", api.Scope_WORKLOAD_SELECTOR, api.Action_ALLOW,
		when(&api.Match{Namespaces: []*api.StringMatch{exact("backend")}})))
	newSet := authz.NewSet(append(slices.Clone(oldPolicies), changed...))
	newSel := newSet.ForWorkload("shop", listed, nil)
	g.Expect(authz.SamePolicies(oldSel, newSel)).To(BeFalse())
	d := authz.Evaluate(newSel, &open)
	g.Expect(d.Allowed).To(BeFalse())
	g.Expect(d.Reason).To(Equal(authz.ReasonNoAllowMatch))

	g.Expect(authz.SamePolicies(nil, nil)).To(BeTrue())
	g.Expect(authz.SamePolicies(oldSel, oldSel[:1])).To(BeFalse())
}
