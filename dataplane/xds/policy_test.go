package xds

import (
	"encoding/json"
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/proto"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

func mustJSON(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("bad JSON %s: %v", s, err)
	}
	return m
}

func ex(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Exact{Exact: s}}
}
func pre(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Prefix{Prefix: s}}
}
func suf(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Suffix{Suffix: s}}
}
func present() *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Presence{Presence: true}}
}
func cidr(s string) *api.Cidr {
	p := netip.MustParsePrefix(s)
	return &api.Cidr{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())} // #nosec G115 -- test data
}
func clause(ms ...*api.Match) *api.Clause { return &api.Clause{Matches: ms} }
func rule(cs ...*api.Clause) *api.Rule    { return &api.Rule{Clauses: cs} }

func authzRes(name string, scope api.Scope, action api.Action, rules ...*api.Rule) *api.Authorization {
	return &api.Authorization{Name: name, Namespace: "ns", Scope: scope, Action: action, Rules: rules}
}

func TestTranslatePolicy(t *testing.T) {
	const allow, deny = api.Action_ALLOW, api.Action_DENY
	wp := func(a *api.Authorization, w string) *api.Authorization { a.Waypoint = w; return a }
	for _, tc := range []struct {
		name      string
		ns        string // default "ns"
		spec      string
		want      []*api.Authorization
		selector  map[string]string
		services  []string
		reasons   []string
		issuePath string // of the first issue, when checked
	}{{
		name: "namespace allow with wildcards",
		spec: `{"rules":[{"from":[{"source":{"principals":["td/ns/a/sa/x","td/ns/b/*","*/sa/y","*"]}}]}]}`,
		want: []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow,
			rule(clause(&api.Match{Principals: []*api.StringMatch{ex("td/ns/a/sa/x"), pre("td/ns/b/"), suf("/sa/y"), present()}})))},
	}, {
		name: "root namespace is global",
		ns:   "root",
		spec: `{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["bad"]}}]}]}`,
		want: []*api.Authorization{{Name: "p", Namespace: "root", Scope: api.Scope_GLOBAL, Action: deny,
			Rules: []*api.Rule{rule(clause(&api.Match{Namespaces: []*api.StringMatch{ex("bad")}}))}}},
	}, {
		name:     "selector",
		spec:     `{"selector":{"matchLabels":{"app":"x"}},"rules":[{}]}`,
		want:     []*api.Authorization{authzRes("p", api.Scope_WORKLOAD_SELECTOR, allow, rule())},
		selector: map[string]string{"app": "x"},
	}, {
		name: "empty selector is the namespace",
		spec: `{"selector":{"matchLabels":{}},"rules":[{}]}`,
		want: []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow, rule())},
	}, {
		name:     "service targets",
		spec:     `{"targetRefs":[{"kind":"Service","name":"b"},{"kind":"Service","group":"","name":"a"}],"rules":[{}]}`,
		want:     []*api.Authorization{authzRes("p", api.Scope_SERVICE, allow, rule())},
		services: []string{"a", "b"},
	}, {
		name: "gateway target",
		spec: `{"targetRefs":[{"kind":"Gateway","group":"gateway.networking.k8s.io","name":"wp"}],"rules":[{}]}`,
		want: []*api.Authorization{wp(authzRes("p", api.Scope_WAYPOINT, allow, rule()), "wp")},
	}, {
		name: "waypoint target (deprecated targetRef)",
		spec: `{"targetRef":{"kind":"Waypoint","group":"ambient.dev","name":"wp"},"rules":[{}]}`,
		want: []*api.Authorization{wp(authzRes("p", api.Scope_WAYPOINT, allow, rule()), "wp")},
	}, {
		name: "service and waypoint targets",
		spec: `{"targetRefs":[{"kind":"Service","name":"s"},{"kind":"Waypoint","group":"ambient.dev","name":"wp"}],"rules":[{}]}`,
		want: []*api.Authorization{
			authzRes("p", api.Scope_SERVICE, allow, rule()),
			wp(authzRes("p~waypoint~wp", api.Scope_WAYPOINT, allow, rule()), "wp"),
		},
		services: []string{"s"},
	}, {
		name: "selector and targets apply to both",
		spec: `{"selector":{"matchLabels":{"app":"x"}},"targetRefs":[{"kind":"Service","name":"s"}],"rules":[{}]}`,
		want: []*api.Authorization{
			authzRes("p", api.Scope_WORKLOAD_SELECTOR, allow, rule()),
			authzRes("p~service", api.Scope_SERVICE, allow, rule()),
		},
		selector: map[string]string{"app": "x"},
		services: []string{"s"},
		reasons:  []string{ReasonSelectorAndTargetRefs},
	}, {
		name:    "unsupported targets only",
		spec:    `{"targetRefs":[{"kind":"ServiceEntry","group":"networking.istio.io","name":"x"},{"kind":"Service","name":"s","namespace":"other"}],"rules":[{}]}`,
		reasons: []string{ReasonUnsupportedTarget, ReasonUnsupportedTarget},
	}, {
		name:      "ALLOW rule with methods is dropped",
		spec:      `{"rules":[{"to":[{"operation":{"methods":["GET"],"ports":["80"]}}]},{"from":[{"source":{"namespaces":["a"]}}]}]}`,
		want:      []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow, rule(clause(&api.Match{Namespaces: []*api.StringMatch{ex("a")}})))},
		reasons:   []string{ReasonL7AllowRuleDropped},
		issuePath: "spec.rules[0].to[0].operation.methods",
	}, {
		name:    "ALLOW with only L7 rules allows nothing",
		spec:    `{"rules":[{"from":[{"source":{"requestPrincipals":["*"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons: []string{ReasonL7AllowRuleDropped},
	}, {
		name:      "DENY keeps the L4 part",
		spec:      `{"action":"DENY","rules":[{"to":[{"operation":{"methods":["GET"],"ports":["80"]}}]}]}`,
		want:      []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, deny, rule(clause(&api.Match{DestinationPorts: []uint32{80}})))},
		reasons:   []string{ReasonL7DenyFieldIgnored},
		issuePath: "spec.rules[0].to[0].operation.methods",
	}, {
		name:    "DENY with only L7 denies everything",
		spec:    `{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, deny, rule())},
		reasons: []string{ReasonL7DenyFieldIgnored},
	}, {
		name:    "DENY drops a L7 condition",
		spec:    `{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["a"]}}],"when":[{"key":"request.headers[x]","values":["y"]}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, deny, rule(clause(&api.Match{Namespaces: []*api.StringMatch{ex("a")}})))},
		reasons: []string{ReasonL7DenyFieldIgnored},
	}, {
		name:    "CUSTOM denies everything in scope",
		spec:    `{"action":"CUSTOM","provider":{"name":"ext"},"selector":{"matchLabels":{"app":"x"}},"rules":[{"to":[{"operation":{"paths":["/x"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_WORKLOAD_SELECTOR, deny, rule())},
		reasons: []string{ReasonCustomAction}, selector: map[string]string{"app": "x"},
	}, {
		name:    "AUDIT is not sent",
		spec:    `{"action":"AUDIT","rules":[{}]}`,
		reasons: []string{ReasonAuditAction},
	}, {
		name: "conditions",
		spec: `{"rules":[{"when":[{"key":"source.ip","values":["10.0.0.0/8"],"notValues":["10.1.0.0/16"]},{"key":"destination.port","values":["80","443"]},{"key":"source.namespace","notValues":["x*"]},{"key":"destination.ip","values":["2001:db8::1"]},{"key":"source.principal","values":["*"]}]}]}`,
		want: []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow, rule(
			clause(&api.Match{SourceIps: []*api.Cidr{cidr("10.0.0.0/8")}, NotSourceIps: []*api.Cidr{cidr("10.1.0.0/16")}}),
			clause(&api.Match{DestinationPorts: []uint32{80, 443}}),
			clause(&api.Match{NotNamespaces: []*api.StringMatch{pre("x")}}),
			clause(&api.Match{DestinationIps: []*api.Cidr{cidr("2001:db8::1/128")}}),
			clause(&api.Match{Principals: []*api.StringMatch{present()}}),
		))},
	}, {
		name: "source addresses, service accounts and trust domains",
		spec: `{"rules":[{"from":[{"source":{"ipBlocks":["10.0.0.1","10.2.0.0/16"],"notIpBlocks":["10.2.3.0/24"],"notRemoteIpBlocks":["10.2.4.4"],"serviceAccounts":["a/x"],"trustDomains":["td"],"notTrustDomains":["old"]}},{"source":{"remoteIpBlocks":["192.168.0.0/16"]}}]}]}`,
		want: []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow, rule(clause(
			&api.Match{
				SourceIps:       []*api.Cidr{cidr("10.0.0.1/32"), cidr("10.2.0.0/16")},
				NotSourceIps:    []*api.Cidr{cidr("10.2.3.0/24"), cidr("10.2.4.4/32")},
				ServiceAccounts: []*api.StringMatch{ex("a/x")},
				Principals:      []*api.StringMatch{pre("td/")},
				NotPrincipals:   []*api.StringMatch{pre("old/")},
			},
			&api.Match{SourceIps: []*api.Cidr{cidr("192.168.0.0/16")}},
		)))},
	}, {
		name:      "ALLOW with a bad CIDR drops the rule",
		spec:      `{"rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/8","bogus"]}}]}]}`,
		want:      []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons:   []string{ReasonInvalidAllowRuleDropped},
		issuePath: "spec.rules[0].from[0].source.ipBlocks[1]",
	}, {
		name:    "DENY with a bad CIDR ignores the field",
		spec:    `{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["bogus"],"namespaces":["a"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, deny, rule(clause(&api.Match{Namespaces: []*api.StringMatch{ex("a")}})))},
		reasons: []string{ReasonInvalidDenyFieldIgnored},
	}, {
		name: "no rules allows nothing",
		spec: `{"rules":[]}`,
		want: []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
	}, {
		name:    "empty source: ALLOW dropped",
		spec:    `{"rules":[{"from":[{"source":{}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons: []string{ReasonInvalidAllowRuleDropped},
	}, {
		name:    "empty source list: ALLOW dropped",
		spec:    `{"rules":[{"from":[{"source":{"principals":[]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons: []string{ReasonInvalidAllowRuleDropped},
	}, {
		name:    "empty source: DENY everything",
		spec:    `{"action":"DENY","rules":[{"from":[{"source":{}}],"to":[{"operation":{"ports":["22"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, deny, rule(clause(&api.Match{DestinationPorts: []uint32{22}})))},
		reasons: []string{ReasonInvalidDenyFieldIgnored},
	}, {
		name:    "condition without values",
		spec:    `{"rules":[{"when":[{"key":"source.ip"}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons: []string{ReasonInvalidAllowRuleDropped},
	}, {
		name:    "middle wildcard",
		spec:    `{"rules":[{"from":[{"source":{"principals":["td/*/sa/x"]}}]}]}`,
		want:    []*api.Authorization{authzRes("p", api.Scope_NAMESPACE, allow)},
		reasons: []string{ReasonInvalidAllowRuleDropped},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := tc.ns
			if ns == "" {
				ns = "ns"
			}
			got := TranslatePolicy(ns, "p", mustJSON(t, tc.spec), "root")
			g.Expect(got.Resources).To(HaveLen(len(tc.want)))
			for i := range tc.want {
				g.Expect(proto.Equal(got.Resources[i], tc.want[i])).To(BeTrue(), "resource %d:\n got %v\nwant %v", i, got.Resources[i], tc.want[i])
			}
			g.Expect(got.Selector).To(Equal(tc.selector))
			g.Expect(got.Services).To(Equal(tc.services))
			var reasons []string
			for _, is := range got.Issues {
				reasons = append(reasons, is.Reason)
			}
			g.Expect(reasons).To(Equal(tc.reasons), "issues: %+v", got.Issues)
			if tc.issuePath != "" {
				g.Expect(got.Issues[0].Field).To(Equal(tc.issuePath))
			}
			checkTranslation(t, mustJSON(t, tc.spec), got, fuzzConnections())
		})
	}
}
