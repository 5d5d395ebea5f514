package authz_test

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
)

func TestCompileErrors(t *testing.T) {
	// withMatch is a valid ALLOW policy ns/p with one rule of (a clause of a valid match, a clause of m).
	withMatch := func(m *api.Match) *api.Authorization {
		return allow("ns/p",
			when(&api.Match{DestinationPorts: []uint32{80}}),
			rule(anyOf(&api.Match{}), anyOf(&api.Match{}, &api.Match{}, m)),
		)
	}
	const at = `authorization policy "ns/p": rules[1].clauses[1].matches[2].`
	cases := []struct {
		name   string
		policy *api.Authorization
		want   []string // fragments of the message
	}{
		{name: "nil policy", policy: nil, want: []string{"authorization policy is nil"}},
		{
			name:   "empty name",
			policy: &api.Authorization{Namespace: "ns"},
			want:   []string{`authorization policy "ns/": name: must not be empty`},
		},
		{
			name:   "empty namespace",
			policy: &api.Authorization{Name: "p"},
			want:   []string{`authorization policy "/p": namespace: must not be empty`},
		},
		{
			name:   "name with a slash",
			policy: &api.Authorization{Name: "a/b", Namespace: "ns"},
			want:   []string{`name: "a/b" must not contain "/"`},
		},
		{
			name:   "unknown scope",
			policy: &api.Authorization{Name: "p", Namespace: "ns", Scope: 42},
			want:   []string{`"ns/p": scope: unknown scope 42`},
		},
		{
			name:   "unknown action: never guess ALLOW or DENY",
			policy: &api.Authorization{Name: "p", Namespace: "ns", Action: 7},
			want:   []string{`"ns/p": action: unknown action 7; want ALLOW or DENY`},
		},
		{
			name:   "WAYPOINT scope without waypoint",
			policy: policy("ns/p", api.Scope_WAYPOINT, api.Action_ALLOW),
			want:   []string{`"ns/p": waypoint: must be set for scope WAYPOINT`},
		},
		{
			name:   "WAYPOINT scope with an empty namespace in the reference",
			policy: waypointPolicy("ns/p", "/wp", api.Action_ALLOW),
			want:   []string{`waypoint: "/wp" is not "<name>" or "<namespace>/<name>"`},
		},
		{
			name:   "WAYPOINT scope with too many slashes",
			policy: waypointPolicy("ns/p", "a/b/c", api.Action_ALLOW),
			want:   []string{`waypoint: "a/b/c" is not`},
		},
		{
			name:   "nil rule",
			policy: &api.Authorization{Name: "p", Namespace: "ns", Rules: []*api.Rule{{}, nil}},
			want:   []string{`"ns/p": rules[1]: rule is nil`},
		},
		{
			name:   "nil clause",
			policy: &api.Authorization{Name: "p", Namespace: "ns", Rules: []*api.Rule{{Clauses: []*api.Clause{nil}}}},
			want:   []string{`rules[0].clauses[0]: clause is nil`},
		},
		{
			name:   "nil match",
			policy: allow("ns/p", rule(anyOf(&api.Match{}, nil))),
			want:   []string{`rules[0].clauses[0].matches[1]: match is nil`},
		},
		{
			name:   "empty StringMatch in principals",
			policy: withMatch(&api.Match{Principals: []*api.StringMatch{exact("a"), {}}}),
			want:   []string{at + "principals[1]: empty StringMatch: set one of exact, prefix, suffix or presence"},
		},
		{
			name:   "nil StringMatch in not_namespaces",
			policy: withMatch(&api.Match{NotNamespaces: []*api.StringMatch{nil}}),
			want:   []string{at + "not_namespaces[0]: empty StringMatch"},
		},
		{
			name:   "empty StringMatch in not_service_accounts",
			policy: withMatch(&api.Match{NotServiceAccounts: []*api.StringMatch{{}}}),
			want:   []string{at + "not_service_accounts[0]: empty StringMatch"},
		},
		{
			name:   "IPv4 prefix length 33",
			policy: withMatch(&api.Match{SourceIps: []*api.Cidr{cidr("10.0.0.0/33")}}),
			want:   []string{at + "source_ips[0]: prefix length 33 exceeds 32"},
		},
		{
			name:   "IPv6 prefix length 129",
			policy: withMatch(&api.Match{NotDestinationIps: []*api.Cidr{cidr("fd00::/64"), cidr("fd00::/129")}}),
			want:   []string{at + "not_destination_ips[1]: prefix length 129 exceeds 128"},
		},
		{
			name:   "address of 5 bytes",
			policy: withMatch(&api.Match{NotSourceIps: []*api.Cidr{{Address: []byte{1, 2, 3, 4, 5}, Length: 8}}}),
			want:   []string{at + "not_source_ips[0]: address has 5 bytes; want 4 (IPv4) or 16 (IPv6)"},
		},
		{
			name:   "empty address",
			policy: withMatch(&api.Match{DestinationIps: []*api.Cidr{{}}}),
			want:   []string{at + "destination_ips[0]: address has 0 bytes"},
		},
		{
			name:   "nil CIDR",
			policy: withMatch(&api.Match{SourceIps: []*api.Cidr{nil}}),
			want:   []string{at + "source_ips[0]: CIDR is nil"},
		},
		{
			name:   "port 0",
			policy: withMatch(&api.Match{DestinationPorts: []uint32{0}}),
			want:   []string{at + "destination_ports[0]: port 0 is not in 1-65535"},
		},
		{
			name:   "port 65536",
			policy: withMatch(&api.Match{NotDestinationPorts: []uint32{443, 65536}}),
			want:   []string{at + "not_destination_ports[1]: port 65536 is not in 1-65535"},
		},
		{
			name: "several problems are all reported",
			policy: &api.Authorization{Name: "p", Namespace: "ns", Action: 3, Rules: []*api.Rule{
				when(&api.Match{DestinationPorts: []uint32{0}, SourceIps: []*api.Cidr{cidr("10.0.0.0/40")}}),
			}},
			want: []string{
				"action: unknown action 3",
				"rules[0].clauses[0].matches[0].source_ips[0]: prefix length 40 exceeds 32",
				"rules[0].clauses[0].matches[0].destination_ports[0]: port 0",
			},
		},
		{
			name:   "a flood of problems is cut short",
			policy: withMatch(&api.Match{DestinationPorts: make([]uint32, 25)}),
			want:   []string{"destination_ports[9]: port 0", "; and 15 more"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := authz.Compile(tc.policy)
			g.Expect(p).To(BeNil())
			g.Expect(err).To(HaveOccurred())
			for _, w := range tc.want {
				g.Expect(err.Error()).To(ContainSubstring(w))
			}
			g.Expect(strings.Count(err.Error(), "destination_ports[10]")).To(BeZero())
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	cases := []struct {
		name   string
		policy *api.Authorization
	}{
		{name: "no rules", policy: allow("ns/p")},
		{name: "WAYPOINT with a relative waypoint", policy: waypointPolicy("ns/p", "wp", api.Action_DENY)},
		{name: "waypoint set on another scope is ignored", policy: &api.Authorization{Name: "p", Namespace: "ns", Waypoint: "a/b/c"}},
		{name: "host bits set", policy: allow("ns/p", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.2.3/8"), cidr("fd00::1/0")}}))},
		{name: "full-length prefixes", policy: allow("ns/p", when(&api.Match{SourceIps: []*api.Cidr{cidr("10.1.2.3/32"), cidr("fd00::1/128")}}))},
		{name: "ports 1 and 65535", policy: allow("ns/p", when(&api.Match{DestinationPorts: []uint32{1, 65535}}))},
		{name: "presence false still means presence", policy: allow("ns/p", when(&api.Match{
			Principals: []*api.StringMatch{{MatchType: &api.StringMatch_Presence{}}},
		}))},
		{name: "empty exact string", policy: allow("ns/p", when(&api.Match{Namespaces: []*api.StringMatch{exact("")}}))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			p, err := authz.Compile(tc.policy)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.Key()).To(Equal("ns/p"))
		})
	}
}

func TestCompiledPolicyDoesNotAliasTheProto(t *testing.T) {
	g := NewWithT(t)
	src := allow("ns/p", when(&api.Match{
		DestinationPorts: []uint32{8080},
		Namespaces:       []*api.StringMatch{exact("frontend")},
		SourceIps:        []*api.Cidr{cidr("10.1.0.0/16")},
	}))
	ps := mustCompile(t, src)
	m := src.Rules[0].Clauses[0].Matches[0]
	m.DestinationPorts[0] = 9090
	m.Namespaces[0] = exact("backend")
	m.SourceIps[0].Address[1] = 9
	src.Name = "changed"
	d := authz.Evaluate(ps, conn())
	g.Expect(d.Allowed).To(BeTrue())
	g.Expect(d.Policy).To(Equal("ns/p"))
}
