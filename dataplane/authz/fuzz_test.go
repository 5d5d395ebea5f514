package authz_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// fuzzConns are the connections FuzzCompile evaluates compiled policies on.
var fuzzConns = []*authz.Connection{
	conn(),
	conn(from(plaintext)),
	conn(from(api1), fromAddr("fd00::5"), toAddr("fd00:1::7"), toPort(443)),
	conn(fromAddr("::ffff:10.1.0.5"), toAddr("0.0.0.0"), toPort(1)),
	{}, // no identity, no addresses, port 0
}

// FuzzCompile feeds arbitrary bytes to Compile: it must not panic, its errors must name the policy, and
// what it compiles must evaluate like the reference evaluator on the proto.
func FuzzCompile(f *testing.F) {
	seeds := append(selectionPolicies(),
		allow("ns/p", rule()),
		deny("ns/p", rule(anyOf(&api.Match{
			Principals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/web"), presence()}, NotPrincipals: []*api.StringMatch{prefix("a")},
			Namespaces: []*api.StringMatch{suffix("end")}, NotNamespaces: []*api.StringMatch{exact("x")},
			ServiceAccounts: []*api.StringMatch{exact("frontend/web")}, NotServiceAccounts: []*api.StringMatch{prefix("backend/")},
			SourceIps: []*api.Cidr{cidr("10.1.0.0/16"), cidr("::ffff:10.1.0.0/112")}, NotSourceIps: []*api.Cidr{cidr("fd00::/8")},
			DestinationIps: []*api.Cidr{cidr("10.2.0.7/32")}, NotDestinationIps: []*api.Cidr{cidr("::/0")},
			DestinationPorts: []uint32{8080, 80}, NotDestinationPorts: []uint32{22},
		}))),
		allow("ns/bad", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.0.0.0/33")}, DestinationPorts: []uint32{70000}})),
		waypointPolicy("ns/wp", "", api.Action_ALLOW),
		&api.Authorization{Name: "p", Namespace: "ns", Scope: 9, Action: 9},
	)
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var a api.Authorization
		if err := proto.Unmarshal(data, &a); err != nil {
			return
		}
		p, err := authz.Compile(&a)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "authorization policy ") {
				t.Fatalf("error does not name the policy: %v", err)
			}
			return
		}
		if p.Key() != a.GetNamespace()+"/"+a.GetName() {
			t.Fatalf("key %q", p.Key())
		}
		ps := []*authz.Policy{p}
		for _, c := range fuzzConns {
			d := authz.Evaluate(ps, c)
			if want := refEvaluate([]*api.Authorization{&a}, c); d.Allowed != want {
				t.Fatalf("Evaluate(%v) = %+v, reference says allowed=%v", c, d, want)
			}
			if p.Matches(c) != refPolicy(&a, c) {
				t.Fatalf("Matches(%v) = %v", c, p.Matches(c))
			}
		}
		set := authz.NewSet(ps)
		sel := set.ForWorkload(p.Namespace(), []string{p.Name()}, nil)
		if want := p.Scope() != api.Scope_SERVICE && p.Scope() != api.Scope_WAYPOINT; (len(sel) == 1) != want {
			t.Fatalf("ForWorkload of a %v policy: %v", p.Scope(), keys(sel))
		}
		sel = set.ForWaypoint(p.Waypoint(), p.Namespace(), []string{p.Name()}, nil)
		if want := p.Scope() == api.Scope_SERVICE || p.Scope() == api.Scope_WAYPOINT; (len(sel) == 1) != want {
			t.Fatalf("ForWaypoint of a %v policy: %v", p.Scope(), keys(sel))
		}
	})
}

// gen builds valid policies and connections from fuzz bytes, out of a small vocabulary close to the
// connection, so that matches and mismatches are both frequent.
type gen struct {
	data []byte
	ids  []identity.Identity
}

func (g *gen) byte() byte {
	if len(g.data) == 0 {
		return 0
	}
	b := g.data[0]
	g.data = g.data[1:]
	return b
}

func (g *gen) n(n int) int { return int(g.byte()) % n }

var fuzzAddrs = []string{"10.1.0.5", "10.2.0.7", "::ffff:10.1.0.5", "fd00::5", "fd00:1::7", "192.168.1.1", "0.0.0.0", "::"}

var fuzzPorts = []uint16{80, 443, 8080, 22, 1, 65535}

func (g *gen) addr() netip.Addr {
	i := g.n(len(fuzzAddrs) + 1)
	if i == len(fuzzAddrs) {
		return netip.Addr{} // invalid: an address the proxy could not determine
	}
	return netip.MustParseAddr(fuzzAddrs[i])
}

func (g *gen) connection() *authz.Connection {
	c := &authz.Connection{SourceAddr: g.addr(), DestinationAddr: g.addr(), DestinationPort: fuzzPorts[g.n(len(fuzzPorts))]}
	if i := g.n(len(g.ids) + 1); i < len(g.ids) {
		c.Source = g.ids[i]
	}
	return c
}

// text picks a value of the kind of string that a field matches, from one of the identities.
func (g *gen) text(field int) string {
	id := g.ids[g.n(len(g.ids))]
	switch field {
	case 0:
		return id.Principal()
	case 1:
		return id.Namespace
	default:
		return id.Namespace + "/" + id.ServiceAccount
	}
}

func (g *gen) stringMatches(field int) []*api.StringMatch {
	out := make([]*api.StringMatch, 1+g.n(2))
	for i := range out {
		v := g.text(field)
		cut := 0
		if len(v) > 0 {
			cut = g.n(len(v) + 1)
		}
		switch g.n(5) {
		case 0:
			out[i] = exact(v)
		case 1:
			out[i] = prefix(v[:cut])
		case 2:
			out[i] = suffix(v[cut:])
		case 3:
			out[i] = presence()
		default:
			out[i] = exact(v[:cut])
		}
	}
	return out
}

func (g *gen) cidrs() []*api.Cidr {
	out := make([]*api.Cidr, 1+g.n(2))
	for i := range out {
		a := netip.MustParseAddr(fuzzAddrs[g.n(len(fuzzAddrs))])
		raw := a.AsSlice()
		if a.Is4() && g.n(4) == 0 {
			a16 := a.As16()
			raw = a16[:]
		}
		maxBits := uint32(32)
		if len(raw) == 16 {
			maxBits = 128
		}
		out[i] = &api.Cidr{Address: raw, Length: uint32(g.byte()) % (maxBits + 1)}
	}
	return out
}

func (g *gen) ports() []uint32 {
	out := make([]uint32, 1+g.n(2))
	for i := range out {
		out[i] = uint32(fuzzPorts[g.n(len(fuzzPorts))])
	}
	return out
}

func (g *gen) match() *api.Match {
	m := &api.Match{}
	// Each of the 12 fields is set with probability 1/4 (for bytes that look random).
	b0, b1, b2, b3 := g.byte(), g.byte(), g.byte(), g.byte()
	fields := uint16(b0&b1) | uint16(b2&b3)<<8
	set := func(bit int) bool { return fields&(1<<bit) != 0 }
	if set(0) {
		m.Principals = g.stringMatches(0)
	}
	if set(1) {
		m.NotPrincipals = g.stringMatches(0)
	}
	if set(2) {
		m.Namespaces = g.stringMatches(1)
	}
	if set(3) {
		m.NotNamespaces = g.stringMatches(1)
	}
	if set(4) {
		m.ServiceAccounts = g.stringMatches(2)
	}
	if set(5) {
		m.NotServiceAccounts = g.stringMatches(2)
	}
	if set(6) {
		m.SourceIps = g.cidrs()
	}
	if set(7) {
		m.NotSourceIps = g.cidrs()
	}
	if set(8) {
		m.DestinationIps = g.cidrs()
	}
	if set(9) {
		m.NotDestinationIps = g.cidrs()
	}
	if set(10) {
		m.DestinationPorts = g.ports()
	}
	if set(11) {
		m.NotDestinationPorts = g.ports()
	}
	return m
}

func (g *gen) policy(key string, action api.Action) *api.Authorization {
	p := policy(key, api.Scope_NAMESPACE, action)
	for range g.n(4) {
		r := &api.Rule{}
		for range g.n(3) {
			c := &api.Clause{}
			for range g.n(3) {
				c.Matches = append(c.Matches, g.match())
			}
			r.Clauses = append(r.Clauses, c)
		}
		p.Rules = append(p.Rules, r)
	}
	return p
}

// allowAll is the ALLOW policy that matches every connection: one rule without clauses (a rule is the AND
// of its clauses, and the AND of nothing holds). allowAllMatch is the same with one clause of one empty
// match (a match is the AND of its non-empty fields).
var (
	allowAll      = allow("zz/allow-all", rule())
	allowAllMatch = allow("zz/allow-all-match", when(&api.Match{}))
)

// FuzzEvaluate generates policy sets and connections and checks the invariants of the evaluation order:
// Evaluate agrees with the reference evaluator, is deterministic, its Allowed does not depend on the
// order of the policies, the deciding policy has the deciding action and matches, adding a DENY policy
// never turns a deny into an allow, and adding an allow-all policy allows exactly the connections that no
// DENY policy matches.
func FuzzEvaluate(f *testing.F) {
	f.Add([]byte{}, "cluster.local", "frontend", "web")
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, "td", "ns", "sa")
	f.Add([]byte("\x03\x01\x02\x02\x01\xff\xff\x00\x01\x00\x02\x00\x03\x00\x00\x01\x02\x01\x00\x01"), "", "frontend", "")
	f.Add([]byte(strings.Repeat("\x13\x37\xa5\x5a\xff\x00\x81", 20)), "cluster.local", "front", "end/sa/x")
	f.Fuzz(func(t *testing.T, data []byte, td, ns, sa string) {
		g := &gen{data: data, ids: []identity.Identity{web, api1, {TrustDomain: td, Namespace: ns, ServiceAccount: sa}}}
		c := g.connection()
		var auths []*api.Authorization
		for i := range g.n(5) {
			action := api.Action_ALLOW
			if g.n(2) == 0 {
				action = api.Action_DENY
			}
			auths = append(auths, g.policy(fmt.Sprintf("ns/p%d", i), action))
		}
		extraDeny := g.policy("ns/extra-deny", api.Action_DENY)
		ps := mustCompile(t, auths...)

		d := authz.Evaluate(ps, c)
		if want := refEvaluate(auths, c); d.Allowed != want {
			t.Fatalf("Evaluate = %+v, reference says allowed=%v\nconnection %+v\npolicies %v", d, want, c, auths)
		}
		if again := authz.Evaluate(ps, c); again != d {
			t.Fatalf("not deterministic: %+v then %+v", d, again)
		}
		if rev := authz.Evaluate(reversed(ps), c); rev.Allowed != d.Allowed {
			t.Fatalf("order matters: %+v, reversed %+v", d, rev)
		}
		anyDeny := false
		for _, p := range ps {
			anyDeny = anyDeny || (p.Action() == api.Action_DENY && p.Matches(c))
		}
		if d.Policy != "" {
			var decider *authz.Policy
			for _, p := range ps {
				if p.Key() == d.Policy {
					decider = p
				}
			}
			wantAction := api.Action_ALLOW
			if !d.Allowed {
				wantAction = api.Action_DENY
			}
			if decider == nil || decider.Action() != wantAction || !decider.Matches(c) {
				t.Fatalf("deciding policy %q does not match with action %v", d.Policy, wantAction)
			}
		} else if !d.Allowed && anyDeny {
			t.Fatalf("denied by a DENY policy without naming it: %+v", d)
		}

		// A DENY policy never turns a deny into an allow, wherever it is added.
		withDeny := mustCompile(t, append(slices.Clone(auths), extraDeny)...)
		for _, set := range [][]*authz.Policy{withDeny, reversed(withDeny)} {
			dd := authz.Evaluate(set, c)
			if !d.Allowed && dd.Allowed {
				t.Fatalf("adding a DENY policy allowed a denied connection: %+v then %+v", d, dd)
			}
		}

		// An allow-all policy allows exactly what no DENY policy matches.
		for _, all := range []*api.Authorization{allowAll, allowAllMatch} {
			withAll := mustCompile(t, append(slices.Clone(auths), all)...)
			if got := authz.Evaluate(withAll, c).Allowed; got != !anyDeny {
				t.Fatalf("with %s: allowed=%v, but a DENY policy matches: %v", all.GetName(), got, anyDeny)
			}
			var noDeny []*api.Authorization
			for _, a := range auths {
				if a.GetAction() == api.Action_ALLOW {
					noDeny = append(noDeny, a)
				}
			}
			if !authz.Evaluate(mustCompile(t, append(noDeny, all)...), c).Allowed {
				t.Fatalf("%s in a set without DENY does not allow", all.GetName())
			}
		}
	})
}

func reversed(ps []*authz.Policy) []*authz.Policy {
	out := slices.Clone(ps)
	slices.Reverse(out)
	return out
}
