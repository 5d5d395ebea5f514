package authz_test

import (
	"testing"

	. "github.com/onsi/gomega"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
)

func TestEvaluate(t *testing.T) {
	cases := []struct {
		name     string
		policies []*api.Authorization
		conn     *authz.Connection
		allowed  bool
		policy   string // deciding policy, "" for none
		reason   string // when not empty, the expected reason
	}{
		// Evaluation order.
		{
			name: "no policy allows", conn: conn(),
			allowed: true, reason: authz.ReasonNoAllowPolicy,
		},
		{
			name:     "a DENY policy that does not match: no ALLOW policy, allowed",
			policies: []*api.Authorization{deny("ns/d", when(&api.Match{Namespaces: []*api.StringMatch{exact("backend")}}))},
			conn:     conn(), allowed: true, reason: authz.ReasonNoAllowPolicy,
		},
		{
			name:     "a DENY policy that matches denies",
			policies: []*api.Authorization{deny("ns/d", when(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(), allowed: false, policy: "ns/d", reason: "denied by policy ns/d",
		},
		{
			name: "DENY beats a matching ALLOW, whatever the order",
			policies: []*api.Authorization{
				allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{presence()}})),
				deny("ns/d", when(&api.Match{DestinationPorts: []uint32{8080}})),
			},
			conn: conn(), allowed: false, policy: "ns/d",
		},
		{
			name:     "an ALLOW policy that matches allows",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{DestinationPorts: []uint32{8080}}))},
			conn:     conn(), allowed: true, policy: "ns/a", reason: "allowed by policy ns/a",
		},
		{
			name:     "ALLOW present but not matching denies",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{DestinationPorts: []uint32{9090}}))},
			conn:     conn(), allowed: false, reason: authz.ReasonNoAllowMatch,
		},
		{
			name:     "ALLOW with empty rules denies all",
			policies: []*api.Authorization{allow("ns/a")},
			conn:     conn(), allowed: false, reason: authz.ReasonNoAllowMatch,
		},
		{
			name:     "DENY with empty rules denies nothing",
			policies: []*api.Authorization{deny("ns/d")},
			conn:     conn(), allowed: true, reason: authz.ReasonNoAllowPolicy,
		},
		{
			name:     "a rule without clauses matches everything (ALLOW all)",
			policies: []*api.Authorization{allow("ns/a", rule())},
			conn:     conn(from(plaintext)), allowed: true, policy: "ns/a",
		},
		{
			name:     "a clause with one empty match matches everything",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{}))},
			conn:     conn(from(plaintext)), allowed: true, policy: "ns/a",
		},
		{
			name:     "a clause without matches matches nothing",
			policies: []*api.Authorization{allow("ns/a", rule(anyOf()))},
			conn:     conn(), allowed: false, reason: authz.ReasonNoAllowMatch,
		},
		// principals.
		{
			name:     "principals exact",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/web")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "principals exact, other identity",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/web")}}))},
			conn:     conn(from(api1)), allowed: false,
		},
		{
			name:     "principals exact does not match a longer principal",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/we")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "principals prefix across the pieces of the identity",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{prefix("cluster.local/ns/fron")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "principals prefix, other namespace",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{prefix("cluster.local/ns/frontend/")}}))},
			conn:     conn(from(api1)), allowed: false,
		},
		{
			name:     "principals suffix",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{suffix("/ns/frontend/sa/web")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "principals suffix, other service account",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{suffix("/sa/web")}}))},
			conn:     conn(from(api1)), allowed: false,
		},
		{
			name:     "principals presence matches any mTLS peer",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{presence()}}))},
			conn:     conn(from(api1)), allowed: true, policy: "ns/a",
		},
		{
			name:     "principals presence does not match plaintext",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{presence()}}))},
			conn:     conn(from(plaintext)), allowed: false,
		},
		{
			name:     "principals empty prefix does not match plaintext either",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Principals: []*api.StringMatch{prefix("")}}))},
			conn:     conn(from(plaintext)), allowed: false,
		},
		{
			name:     "not_principals: the listed principal does not match",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotPrincipals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/web")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_principals: another principal matches",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotPrincipals: []*api.StringMatch{exact("cluster.local/ns/frontend/sa/web")}}))},
			conn:     conn(from(api1)), allowed: true, policy: "ns/a",
		},
		{
			name:     "not_principals alone matches plaintext (Istio)",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotPrincipals: []*api.StringMatch{prefix("cluster.local/")}}))},
			conn:     conn(from(plaintext)), allowed: true, policy: "ns/a",
		},
		{
			name:     "DENY not_principals presence requires mTLS: plaintext denied",
			policies: []*api.Authorization{deny("ns/mtls", when(&api.Match{NotPrincipals: []*api.StringMatch{presence()}}))},
			conn:     conn(from(plaintext)), allowed: false, policy: "ns/mtls",
		},
		{
			name:     "DENY not_principals presence requires mTLS: mTLS allowed",
			policies: []*api.Authorization{deny("ns/mtls", when(&api.Match{NotPrincipals: []*api.StringMatch{presence()}}))},
			conn:     conn(), allowed: true,
		},
		// namespaces.
		{
			name:     "namespaces exact",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "namespaces exact, other namespace",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(from(api1)), allowed: false,
		},
		{
			name:     "namespaces prefix and suffix",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Namespaces: []*api.StringMatch{prefix("front"), suffix("end")}}))},
			conn:     conn(from(api1)), allowed: true, policy: "ns/a",
		},
		{
			name:     "not_namespaces, listed namespace",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotNamespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_namespaces, other namespace",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotNamespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(from(api1)), allowed: true, policy: "ns/a",
		},
		{
			name:     "namespaces never match plaintext",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{Namespaces: []*api.StringMatch{presence()}}))},
			conn:     conn(from(plaintext)), allowed: false,
		},
		{
			name:     "not_namespaces match plaintext (ISTIO-SECURITY-2021-004)",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotNamespaces: []*api.StringMatch{exact("frontend")}}))},
			conn:     conn(from(plaintext)), allowed: true, policy: "ns/a",
		},
		{
			name: "positive and negative lists of a field must both hold",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{
				Namespaces: []*api.StringMatch{prefix("front")}, NotNamespaces: []*api.StringMatch{exact("frontend")},
			}))},
			conn: conn(), allowed: false,
		},
		// service accounts.
		{
			name:     "service_accounts exact <ns>/<sa>",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{ServiceAccounts: []*api.StringMatch{exact("frontend/web")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "service_accounts: same name in another namespace",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{ServiceAccounts: []*api.StringMatch{exact("backend/web")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "service_accounts prefix <ns>/",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{ServiceAccounts: []*api.StringMatch{prefix("frontend/")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "not_service_accounts, listed",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotServiceAccounts: []*api.StringMatch{exact("frontend/web")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_service_accounts, not listed",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotServiceAccounts: []*api.StringMatch{exact("frontend/web")}}))},
			conn:     conn(from(api1)), allowed: true, policy: "ns/a",
		},
		{
			name:     "service_accounts never match plaintext",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{ServiceAccounts: []*api.StringMatch{suffix("")}}))},
			conn:     conn(from(plaintext)), allowed: false,
		},
		{
			name:     "not_service_accounts match plaintext",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotServiceAccounts: []*api.StringMatch{presence()}}))},
			conn:     conn(from(plaintext)), allowed: true, policy: "ns/a",
		},
		// source addresses.
		{
			name:     "source_ips IPv4",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.0.0/16")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "source_ips IPv4, outside",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.9.0.0/16")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "source_ips with host bits set are masked",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.200.9/16")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "source_ips IPv4 matches an IPv4-mapped IPv6 source",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.0.0/16")}}))},
			conn:     conn(fromAddr("::ffff:10.1.0.5")), allowed: true, policy: "ns/a",
		},
		{
			name:     "source_ips as an IPv4-mapped IPv6 prefix matches IPv4",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("::ffff:10.1.0.0/112")}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "not_source_ips IPv4",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotSourceIps: []*api.Cidr{cidr("10.1.0.5/32")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "source_ips IPv6",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("fd00:1::/64")}}))},
			conn:     conn(fromAddr("fd00:1::5")), allowed: true, policy: "ns/a",
		},
		{
			name:     "source_ips IPv6 does not match an IPv4 source",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{SourceIps: []*api.Cidr{cidr("::/0")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_source_ips IPv6",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotSourceIps: []*api.Cidr{cidr("fd00:1::/64")}}))},
			conn:     conn(fromAddr("fd00:2::5")), allowed: true, policy: "ns/a",
		},
		// destination addresses and ports.
		{
			name:     "destination_ips: the service VIP the client connected to",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{DestinationIps: []*api.Cidr{cidr("10.96.0.10/32")}}))},
			conn:     conn(toAddr("10.96.0.10")), allowed: true, policy: "ns/a",
		},
		{
			name:     "destination_ips, other address",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{DestinationIps: []*api.Cidr{cidr("10.96.0.10/32")}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_destination_ips",
			policies: []*api.Authorization{deny("ns/d", when(&api.Match{NotDestinationIps: []*api.Cidr{cidr("10.2.0.0/16")}}))},
			conn:     conn(toAddr("10.3.0.1")), allowed: false, policy: "ns/d",
		},
		{
			name:     "destination_ports, one of the list",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{DestinationPorts: []uint32{80, 8080}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		{
			name:     "not_destination_ports",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotDestinationPorts: []uint32{22, 8080}}))},
			conn:     conn(), allowed: false,
		},
		{
			name:     "not_destination_ports, other port",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{NotDestinationPorts: []uint32{22}}))},
			conn:     conn(), allowed: true, policy: "ns/a",
		},
		// Combinations.
		{
			name: "fields of a match are ANDed",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{
				Namespaces: []*api.StringMatch{exact("frontend")}, DestinationPorts: []uint32{9090},
			}))},
			conn: conn(), allowed: false,
		},
		{
			name: "clauses of a rule are ANDed: all hold",
			policies: []*api.Authorization{allow("ns/a", rule(
				anyOf(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}}),
				anyOf(&api.Match{DestinationPorts: []uint32{8080}}),
			))},
			conn: conn(), allowed: true, policy: "ns/a",
		},
		{
			name: "clauses of a rule are ANDed: one fails",
			policies: []*api.Authorization{allow("ns/a", rule(
				anyOf(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}}),
				anyOf(&api.Match{DestinationPorts: []uint32{8080}}),
			))},
			conn: conn(toPort(9090)), allowed: false,
		},
		{
			name: "matches of a clause are ORed",
			policies: []*api.Authorization{allow("ns/a", rule(anyOf(
				&api.Match{Namespaces: []*api.StringMatch{exact("backend")}},
				&api.Match{SourceIps: []*api.Cidr{cidr("10.1.0.0/16")}},
			)))},
			conn: conn(), allowed: true, policy: "ns/a",
		},
		{
			name: "rules of a policy are ORed",
			policies: []*api.Authorization{allow("ns/a",
				when(&api.Match{DestinationPorts: []uint32{9090}}),
				when(&api.Match{Principals: []*api.StringMatch{suffix("/sa/web")}}),
			)},
			conn: conn(), allowed: true, policy: "ns/a",
		},
		{
			name: "plaintext source against an ALLOW rule with principals and ports",
			policies: []*api.Authorization{allow("ns/a", when(&api.Match{
				Principals: []*api.StringMatch{presence()}, DestinationPorts: []uint32{8080},
			}))},
			conn: conn(from(plaintext)), allowed: false,
		},
		{
			name: "multiple ALLOW policies: the first matching one decides",
			policies: []*api.Authorization{
				allow("ns/a1", when(&api.Match{DestinationPorts: []uint32{9090}})),
				allow("ns/a2", when(&api.Match{DestinationPorts: []uint32{8080}})),
				allow("ns/a3", rule()),
			},
			conn: conn(), allowed: true, policy: "ns/a2",
		},
		{
			name: "multiple DENY policies: the first matching one decides",
			policies: []*api.Authorization{
				deny("ns/d1", when(&api.Match{DestinationPorts: []uint32{9090}})),
				allow("ns/a", rule()),
				deny("ns/d2", when(&api.Match{NotPrincipals: []*api.StringMatch{presence()}})),
				deny("ns/d3", rule()),
			},
			conn: conn(from(plaintext)), allowed: false, policy: "ns/d2",
		},
		{
			name: "DENY on another port and ALLOW from a namespace",
			policies: []*api.Authorization{
				deny("ns/d", when(&api.Match{DestinationPorts: []uint32{22}})),
				allow("ns/a", when(&api.Match{Namespaces: []*api.StringMatch{exact("frontend")}})),
			},
			conn: conn(), allowed: true, policy: "ns/a",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ps := mustCompile(t, tc.policies...)
			d := authz.Evaluate(ps, tc.conn)
			g.Expect(d.Allowed).To(Equal(tc.allowed), "decision %+v", d)
			g.Expect(d.Policy).To(Equal(tc.policy), "decision %+v", d)
			if tc.reason != "" {
				g.Expect(d.Reason).To(Equal(tc.reason))
			}
			g.Expect(d.Reason).NotTo(BeEmpty())
			// The reference evaluator, straight on the protos, agrees.
			g.Expect(refEvaluate(tc.policies, tc.conn)).To(Equal(tc.allowed))
		})
	}
}

func TestPolicyMatches(t *testing.T) {
	g := NewWithT(t)
	ps := mustCompile(t, deny("ns/d", when(&api.Match{DestinationPorts: []uint32{8080}})))
	g.Expect(ps[0].Matches(conn())).To(BeTrue())
	g.Expect(ps[0].Matches(conn(toPort(80)))).To(BeFalse())
}

func TestEvaluateIgnoresNilPolicies(t *testing.T) {
	g := NewWithT(t)
	ps := mustCompile(t, allow("ns/a", when(&api.Match{DestinationPorts: []uint32{8080}})))
	g.Expect(authz.Evaluate([]*authz.Policy{nil, ps[0], nil}, conn())).To(Equal(authz.Decision{
		Allowed: true, Policy: "ns/a", Reason: "allowed by policy ns/a",
	}))
	g.Expect(authz.Evaluate([]*authz.Policy{nil}, conn()).Allowed).To(BeTrue())
}

// benchPolicies is 10 policies of 3 rules each: 2 DENY that do not match, 8 ALLOW of which only the last
// matches, on its last rule, so that every rule is evaluated.
func benchPolicies(tb testing.TB) []*authz.Policy {
	var ps []*api.Authorization
	for i := range 10 {
		action := api.Action_ALLOW
		if i < 2 {
			action = api.Action_DENY
		}
		p := policy("ns/p"+string(rune('a'+i)), api.Scope_NAMESPACE, action,
			when(&api.Match{
				Principals:       []*api.StringMatch{exact("cluster.local/ns/other/sa/x"), prefix("cluster.local/ns/team-")},
				DestinationPorts: []uint32{8080},
			}),
			rule(
				anyOf(&api.Match{Namespaces: []*api.StringMatch{exact("backend"), exact("db")}}),
				anyOf(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.0.0/16"), cidr("fd00::/8")}}),
			),
			when(&api.Match{
				ServiceAccounts:  []*api.StringMatch{exact("frontend/web-" + string(rune('a'+i)))},
				NotSourceIps:     []*api.Cidr{cidr("192.168.0.0/16")},
				DestinationPorts: []uint32{80, 8080},
			}),
		)
		ps = append(ps, p)
	}
	// The last policy's last rule matches web-j.
	return mustCompile(tb, ps...)
}

func benchConn() *authz.Connection {
	c := conn()
	c.Source.ServiceAccount = "web-j"
	return c
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	g := NewWithT(t)
	ps := benchPolicies(t)
	c := benchConn()
	g.Expect(authz.Evaluate(ps, c)).To(Equal(authz.Decision{Allowed: true, Policy: "ns/pj", Reason: "allowed by policy ns/pj"}))
	plain := conn(from(plaintext))
	g.Expect(authz.Evaluate(ps, plain).Allowed).To(BeFalse())

	var d authz.Decision
	g.Expect(testing.AllocsPerRun(100, func() { d = authz.Evaluate(ps, c) })).To(BeZero())
	g.Expect(testing.AllocsPerRun(100, func() { d = authz.Evaluate(ps, plain) })).To(BeZero())
	// A Connection on the caller's stack stays there.
	g.Expect(testing.AllocsPerRun(100, func() {
		local := authz.Connection{Source: web, SourceAddr: c.SourceAddr, DestinationAddr: c.DestinationAddr, DestinationPort: 80}
		d = authz.Evaluate(ps, &local)
	})).To(BeZero())
	_ = d
}

func BenchmarkEvaluate(b *testing.B) {
	ps := benchPolicies(b)
	b.Run("mtls-allowed-by-last-rule", func(b *testing.B) {
		c := benchConn()
		b.ReportAllocs()
		for b.Loop() {
			if !authz.Evaluate(ps, c).Allowed {
				b.Fatal("denied")
			}
		}
	})
	b.Run("plaintext-denied", func(b *testing.B) {
		c := conn(from(plaintext))
		b.ReportAllocs()
		for b.Loop() {
			if authz.Evaluate(ps, c).Allowed {
				b.Fatal("allowed")
			}
		}
	})
	b.Run("select-and-evaluate", func(b *testing.B) {
		set := authz.NewSet(ps)
		c := benchConn()
		buf := make([]*authz.Policy, 0, 16)
		b.ReportAllocs()
		for b.Loop() {
			sel := set.ForWorkload("ns", nil, buf[:0])
			if !authz.Evaluate(sel, c).Allowed {
				b.Fatal("denied")
			}
		}
	})
}
