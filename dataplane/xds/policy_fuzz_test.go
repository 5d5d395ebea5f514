package xds

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// FuzzTranslatePolicy translates random AuthorizationPolicy specs and checks that the translation never
// panics, always compiles, never emits the empty forms whose meaning differs between implementations, and
// never allows a connection that Istio's semantics would deny for some request: for every connection of a
// fixed set, if a translated policy allows it, an independent three-valued evaluation of the Istio spec
// (where anything only known at L7, or malformed, is "unknown") must say "allowed for sure".
func FuzzTranslatePolicy(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{1, 1, 1, 1, 1, 1},
		{2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		{0, 2, 1, 0, 7, 7, 7, 7, 3, 3, 3, 3, 3},
		[]byte("the quick brown fox jumps over the lazy dog"),
		{255, 254, 253, 252, 251, 250, 249, 248, 247, 246},
	} {
		f.Add(seed)
	}
	conns := fuzzConnections()
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &specGen{data: data}
		spec := g.spec()
		tr := TranslatePolicy("ns", "p", spec, "root")
		checkTranslation(t, spec, tr, conns)
	})
}

func checkTranslation(t *testing.T, spec map[string]any, tr TranslatedPolicy, conns []authz.Connection) {
	t.Helper()
	names := map[string]bool{}
	for _, res := range tr.Resources {
		if names[res.GetName()] {
			t.Fatalf("duplicate resource name %q; spec %v", res.GetName(), spec)
		}
		names[res.GetName()] = true
		for i, r := range res.GetRules() {
			for j, c := range r.GetClauses() {
				if len(c.GetMatches()) == 0 {
					t.Fatalf("rules[%d].clauses[%d] is empty (matches nothing, ztunnel reads it as everything); spec %v", i, j, spec)
				}
				for k, m := range c.GetMatches() {
					if isEmptyMatch(m) {
						t.Fatalf("rules[%d].clauses[%d].matches[%d] is empty; spec %v", i, j, k, spec)
					}
				}
			}
		}
		p, err := authz.Compile(res)
		if err != nil {
			t.Fatalf("translation does not compile: %v; spec %v", err, spec)
		}
		for i := range conns {
			c := &conns[i]
			if !authz.Evaluate([]*authz.Policy{p}, c).Allowed {
				continue
			}
			if ref := istioAllows(spec, c); ref != yes {
				t.Fatalf("resource %s (%v) allows %+v but Istio's semantics say %v\nspec: %#v\ntranslation: %v",
					res.GetName(), res.GetAction(), *c, ref, spec, res)
			}
		}
	}
	if a := spec["action"]; a == "AUDIT" && len(tr.Resources) != 0 {
		t.Fatalf("AUDIT produced resources")
	}
}

// fuzzConnections is the cross product of a few sources, addresses and ports.
func fuzzConnections() []authz.Connection {
	ids := []identity.Identity{
		{}, identity.New("td", "a", "x"), identity.New("td", "a", "y"), identity.New("td", "b", "y"), identity.New("other", "a", "x"),
	}
	addrs := []string{"10.0.0.1", "10.1.2.3", "192.168.1.1", "2001:db8::1", "172.16.0.1"}
	ports := []uint16{80, 443, 8080, 9090}
	var out []authz.Connection
	for _, id := range ids {
		for _, s := range addrs {
			for _, d := range addrs {
				for _, p := range ports {
					out = append(out, authz.Connection{Source: id, SourceAddr: netip.MustParseAddr(s), DestinationAddr: netip.MustParseAddr(d), DestinationPort: p})
				}
			}
		}
	}
	return out
}

// specGen builds a policy spec from fuzz bytes: each decision consumes one byte.
type specGen struct {
	data []byte
	pos  int
}

func (g *specGen) next(n int) int {
	if g.pos >= len(g.data) {
		return 0
	}
	b := g.data[g.pos]
	g.pos++
	return int(b) % n
}

func (g *specGen) pick(vs ...any) any { return vs[g.next(len(vs))] }

func (g *specGen) list(vocab ...any) any {
	switch g.next(8) {
	case 6:
		return nil
	case 7:
		return "not-a-list"
	}
	n := g.next(4)
	out := make([]any, 0, n)
	for range n {
		out = append(out, g.pick(vocab...))
	}
	return out
}

var (
	vocabPrincipals = []any{"td/ns/a/sa/x", "td/ns/a/sa/y", "*", "td/ns/a/*", "*/sa/y", "td/*/sa/x", "", "other/ns/a/sa/x", "*td*", 7}
	vocabNamespaces = []any{"a", "b", "*", "a*", "*b", "", "a*b"}
	vocabSAs        = []any{"a/x", "b/y", "x", "a/*", "/x"}
	vocabTDs        = []any{"td", "other", "*", "t/d", ""}
	vocabIPs        = []any{"10.0.0.1", "10.0.0.0/8", "10.1.0.0/16", "192.168.1.1", "2001:db8::1", "2001:db8::/32", "bogus", "10.0.0.0/33", "0.0.0.0/0", "10.0.0.1/8"}
	vocabPorts      = []any{"80", "443", "8080", "0", "70000", "x", int64(80), float64(443), 8.5}
	vocabL7         = []any{"a.com", "GET", "/x", "*"}
	vocabKeys       = []any{"source.ip", "remote.ip", "destination.ip", "destination.port", "source.namespace", "source.principal", "request.headers[x]", "connection.sni", ""}
)

func (g *specGen) spec() map[string]any {
	spec := map[string]any{}
	if a := g.pick(nil, "ALLOW", "DENY", "DENY", "ALLOW", "AUDIT", "CUSTOM", "BOGUS", int64(3)); a != nil {
		spec["action"] = a
	}
	switch g.next(6) {
	case 1:
		spec["selector"] = map[string]any{"matchLabels": map[string]any{"app": "x"}}
	case 2:
		spec["targetRefs"] = []any{map[string]any{"kind": "Service", "name": "svc"}, map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}}
	case 3:
		spec["selector"] = map[string]any{"matchLabels": "bad"}
	case 4:
		spec["targetRef"] = map[string]any{"group": "ambient.dev", "kind": "Waypoint", "name": "wp"}
		spec["selector"] = map[string]any{"matchLabels": map[string]any{"app": "x"}}
	}
	switch g.next(8) {
	case 0:
	case 1:
		spec["rules"] = "bad"
	case 2:
		spec["rules"] = []any{}
	default:
		n := 1 + g.next(3)
		rules := make([]any, 0, n)
		for range n {
			rules = append(rules, g.rule())
		}
		spec["rules"] = rules
	}
	return spec
}

func (g *specGen) rule() any {
	switch g.next(12) {
	case 0:
		return nil
	case 1:
		return map[string]any{}
	}
	r := map[string]any{}
	if g.next(2) == 0 {
		r["from"] = g.entries("source", g.source)
	}
	if g.next(2) == 0 {
		r["to"] = g.entries("operation", g.operation)
	}
	if g.next(2) == 0 {
		n := g.next(3)
		when := make([]any, 0, n)
		for range n {
			when = append(when, g.condition())
		}
		r["when"] = when
	}
	if g.next(16) == 0 {
		r["future"] = []any{"x"}
	}
	return r
}

func (g *specGen) entries(key string, inner func() map[string]any) any {
	n := g.next(3)
	out := make([]any, 0, n)
	for range n {
		switch g.next(10) {
		case 0:
			out = append(out, "bad")
		case 1:
			out = append(out, map[string]any{})
		case 2:
			out = append(out, map[string]any{key: inner(), "extra": "x"})
		default:
			out = append(out, map[string]any{key: inner()})
		}
	}
	return out
}

func (g *specGen) source() map[string]any {
	s := map[string]any{}
	fields := []struct {
		name  string
		vocab []any
	}{
		{"principals", vocabPrincipals}, {"notPrincipals", vocabPrincipals},
		{"namespaces", vocabNamespaces}, {"notNamespaces", vocabNamespaces},
		{"serviceAccounts", vocabSAs}, {"notServiceAccounts", vocabSAs},
		{"trustDomains", vocabTDs}, {"notTrustDomains", vocabTDs},
		{"ipBlocks", vocabIPs}, {"notIpBlocks", vocabIPs}, {"remoteIpBlocks", vocabIPs}, {"notRemoteIpBlocks", vocabIPs},
		{"requestPrincipals", vocabL7}, {"notRequestPrincipals", vocabL7},
	}
	for range 1 + g.next(3) {
		f := fields[g.next(len(fields))]
		s[f.name] = g.list(f.vocab...)
	}
	return s
}

func (g *specGen) operation() map[string]any {
	o := map[string]any{}
	fields := []string{"ports", "notPorts", "hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}
	for range 1 + g.next(3) {
		f := fields[g.next(len(fields))]
		if strings.Contains(strings.ToLower(f), "ports") {
			o[f] = g.list(vocabPorts...)
		} else {
			o[f] = g.list(vocabL7...)
		}
	}
	return o
}

func (g *specGen) condition() any {
	if g.next(12) == 0 {
		return "bad"
	}
	key := g.pick(vocabKeys...).(string)
	var vocab []any
	switch key {
	case "source.ip", "remote.ip", "destination.ip":
		vocab = vocabIPs
	case "destination.port":
		vocab = vocabPorts
	case "source.namespace":
		vocab = vocabNamespaces
	default:
		vocab = vocabPrincipals
	}
	c := map[string]any{"key": key}
	if g.next(2) == 0 {
		c["values"] = g.list(vocab...)
	}
	if g.next(2) == 0 {
		c["notValues"] = g.list(vocab...)
	}
	return c
}

// tri is a three-valued truth: what Istio decides, when it can be known at L4.
type tri int8

const (
	no tri = iota
	yes
	unknown
)

func (v tri) String() string { return [...]string{"no", "yes", "unknown"}[v] }

func triOf(b bool) tri {
	if b {
		return yes
	}
	return no
}

func and(a, b tri) tri {
	switch {
	case a == no || b == no:
		return no
	case a == yes && b == yes:
		return yes
	}
	return unknown
}

func or(a, b tri) tri {
	switch {
	case a == yes || b == yes:
		return yes
	case a == no && b == no:
		return no
	}
	return unknown
}

// notIfSet negates the result of a negative field that is set; an absent field is no condition.
func notIfSet(a tri, set bool) tri {
	if !set {
		return a
	}
	return not(a)
}

func not(a tri) tri {
	switch a {
	case yes:
		return no
	case no:
		return yes
	}
	return unknown
}

// istioAllows is the reference: whether Istio, applying this one policy to connection c, allows it.
func istioAllows(spec map[string]any, c *authz.Connection) tri {
	switch spec["action"] {
	case nil, "", "ALLOW":
		return refPolicyMatches(spec, c)
	case "DENY":
		return not(refPolicyMatches(spec, c))
	case "AUDIT":
		return yes
	default: // CUSTOM asks an external server; anything else is refused by Istio
		return unknown
	}
}

func refPolicyMatches(spec map[string]any, c *authz.Connection) tri {
	raw, ok := spec["rules"]
	if !ok || raw == nil {
		return no
	}
	rules, ok := raw.([]any)
	if !ok {
		return unknown
	}
	out := no
	for _, r := range rules {
		out = or(out, refRule(r, c))
	}
	return out
}

func refRule(raw any, c *authz.Connection) tri {
	r, ok := raw.(map[string]any)
	if !ok {
		return unknown
	}
	out := yes
	for k, v := range r {
		switch k {
		case "from":
			out = and(out, refAny(v, "source", c, refSource))
		case "to":
			out = and(out, refAny(v, "operation", c, refOperation))
		case "when":
			if v == nil {
				continue
			}
			list, ok := v.([]any)
			if !ok {
				out = and(out, unknown)
				continue
			}
			for _, cond := range list {
				out = and(out, refCondition(cond, c))
			}
		default:
			out = and(out, unknown)
		}
	}
	return out
}

func refAny(v any, key string, c *authz.Connection, f func(map[string]any, *authz.Connection) tri) tri {
	if v == nil {
		return yes
	}
	list, ok := v.([]any)
	if !ok {
		return unknown
	}
	if len(list) == 0 {
		return yes
	}
	out := no
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			out = or(out, unknown)
			continue
		}
		inner, ok := m[key].(map[string]any)
		if !ok || len(inner) == 0 {
			out = or(out, unknown)
			continue
		}
		res := f(inner, c)
		for k := range m {
			if k != key {
				res = and(res, unknown)
			}
		}
		out = or(out, res)
	}
	return out
}

// refField evaluates one list-valued field: set=false when absent or empty (no condition).
func refField(v any, match func(string) tri) (tri, bool) {
	if v == nil {
		return yes, false
	}
	list, ok := v.([]any)
	if !ok {
		return unknown, true
	}
	if len(list) == 0 {
		return yes, false
	}
	out := no
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			out = or(out, unknown)
			continue
		}
		out = or(out, match(s))
	}
	return out, true
}

func refSource(src map[string]any, c *authz.Connection) tri {
	out := yes
	set := false
	principal, ns, sa, td := "", "", "", ""
	if !c.Source.IsZero() {
		principal, ns, sa, td = c.Source.Principal(), c.Source.Namespace, c.Source.Namespace+"/"+c.Source.ServiceAccount, c.Source.TrustDomain
	}
	for k, v := range src {
		var res tri
		var isSet bool
		switch k {
		case "principals":
			res, isSet = refField(v, func(s string) tri { return refWildcard(s, principal) })
		case "notPrincipals":
			res, isSet = refField(v, func(s string) tri { return refWildcard(s, principal) })
			res = notIfSet(res, isSet)
		case "namespaces":
			res, isSet = refField(v, func(s string) tri { return refWildcard(s, ns) })
		case "notNamespaces":
			res, isSet = refField(v, func(s string) tri { return refWildcard(s, ns) })
			res = notIfSet(res, isSet)
		case "serviceAccounts", "notServiceAccounts":
			res, isSet = refField(v, func(s string) tri {
				if n, name, ok := strings.Cut(s, "/"); !ok || n == "" || name == "" || strings.Contains(s, "*") {
					return unknown
				}
				return triOf(sa != "" && s == sa)
			})
			if k == "notServiceAccounts" {
				res = notIfSet(res, isSet)
			}
		case "trustDomains", "notTrustDomains":
			res, isSet = refField(v, func(s string) tri {
				if s == "" || strings.ContainsAny(s, "/*") {
					return unknown
				}
				return triOf(td != "" && s == td)
			})
			if k == "notTrustDomains" {
				res = notIfSet(res, isSet)
			}
		case "ipBlocks", "remoteIpBlocks":
			res, isSet = refField(v, func(s string) tri { return refCIDR(s, c.SourceAddr) })
		case "notIpBlocks", "notRemoteIpBlocks":
			res, isSet = refField(v, func(s string) tri { return refCIDR(s, c.SourceAddr) })
			res = notIfSet(res, isSet)
		default: // requestPrincipals and the like: known only at L7
			res, isSet = refField(v, func(string) tri { return unknown })
			if isSet {
				res = unknown
			}
		}
		set = set || isSet
		out = and(out, res)
	}
	if !set {
		return unknown // an empty source is refused by Istio
	}
	return out
}

func refOperation(op map[string]any, c *authz.Connection) tri {
	out := yes
	set := false
	for k, v := range op {
		var res tri
		var isSet bool
		switch k {
		case "ports":
			res, isSet = refPorts(v, c.DestinationPort)
		case "notPorts":
			res, isSet = refPorts(v, c.DestinationPort)
			res = notIfSet(res, isSet)
		default:
			res, isSet = refField(v, func(string) tri { return unknown })
			if isSet {
				res = unknown
			}
		}
		set = set || isSet
		out = and(out, res)
	}
	if !set {
		return unknown
	}
	return out
}

func refPorts(v any, p uint16) (tri, bool) {
	if v == nil {
		return yes, false
	}
	list, ok := v.([]any)
	if !ok {
		return unknown, true
	}
	if len(list) == 0 {
		return yes, false
	}
	out := no
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			out = or(out, unknown) // Istio's schema wants strings
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			out = or(out, unknown)
			continue
		}
		out = or(out, triOf(n == int(p)))
	}
	return out, true
}

func refCondition(raw any, c *authz.Connection) tri {
	m, ok := raw.(map[string]any)
	if !ok {
		return unknown
	}
	for k := range m {
		if k != "key" && k != "values" && k != "notValues" {
			return unknown
		}
	}
	key, _ := m["key"].(string)
	principal, ns := "", ""
	if !c.Source.IsZero() {
		principal, ns = c.Source.Principal(), c.Source.Namespace
	}
	var match func(string) tri
	switch key {
	case "source.ip", "remote.ip":
		match = func(s string) tri { return refCIDR(s, c.SourceAddr) }
	case "destination.ip":
		match = func(s string) tri { return refCIDR(s, c.DestinationAddr) }
	case "destination.port":
		match = func(s string) tri {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 65535 {
				return unknown
			}
			return triOf(n == int(c.DestinationPort))
		}
	case "source.namespace":
		match = func(s string) tri { return refWildcard(s, ns) }
	case "source.principal":
		match = func(s string) tri { return refWildcard(s, principal) }
	default:
		return unknown
	}
	pos, posSet := refField(m["values"], match)
	neg, negSet := refField(m["notValues"], match)
	if !posSet && !negSet {
		return unknown
	}
	out := yes
	if posSet {
		out = and(out, pos)
	}
	if negSet {
		out = and(out, not(neg))
	}
	return out
}

// refWildcard is Istio's string matching with "*" wildcards; v == "" is an absent value (plaintext),
// which no entry matches.
func refWildcard(pattern, v string) tri {
	n := strings.Count(pattern, "*")
	if n > 1 || (n == 1 && pattern != "*" && !strings.HasPrefix(pattern, "*") && !strings.HasSuffix(pattern, "*")) {
		return unknown
	}
	if v == "" {
		return no
	}
	switch {
	case pattern == "*":
		return yes
	case strings.HasSuffix(pattern, "*"):
		return triOf(strings.HasPrefix(v, strings.TrimSuffix(pattern, "*")))
	case strings.HasPrefix(pattern, "*"):
		return triOf(strings.HasSuffix(v, strings.TrimPrefix(pattern, "*")))
	}
	return triOf(pattern == v)
}

func refCIDR(s string, a netip.Addr) tri {
	var p netip.Prefix
	var err error
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
	} else {
		var addr netip.Addr
		addr, err = netip.ParseAddr(s)
		p = netip.PrefixFrom(addr, addr.BitLen())
	}
	if err != nil {
		return unknown
	}
	return triOf(p.Masked().Contains(a))
}

// TestReferenceEvaluator checks the reference itself on a few hand-written cases, so that the fuzz test
// does not pass against a broken oracle.
func TestReferenceEvaluator(t *testing.T) {
	sleep := authz.Connection{Source: identity.New("td", "a", "x"), SourceAddr: netip.MustParseAddr("10.0.0.1"), DestinationAddr: netip.MustParseAddr("10.1.2.3"), DestinationPort: 80}
	plain := sleep
	plain.Source = identity.Identity{}
	for i, tc := range []struct {
		spec string
		c    authz.Connection
		want tri
	}{
		{`{}`, sleep, no},
		{`{"rules":[{}]}`, sleep, yes},
		{`{"action":"DENY","rules":[{}]}`, sleep, no},
		{`{"rules":[{"from":[{"source":{"principals":["td/ns/a/sa/x"]}}]}]}`, sleep, yes},
		{`{"rules":[{"from":[{"source":{"principals":["*"]}}]}]}`, plain, no},
		{`{"action":"DENY","rules":[{"from":[{"source":{"notPrincipals":["*"]}}]}]}`, plain, no},
		{`{"rules":[{"to":[{"operation":{"methods":["GET"]}}]}]}`, sleep, unknown},
		{`{"action":"DENY","rules":[{"to":[{"operation":{"methods":["GET"],"ports":["81"]}}]}]}`, sleep, yes},
		{`{"rules":[{"when":[{"key":"destination.port","notValues":["80"]}]}]}`, sleep, no},
	} {
		spec := mustJSON(t, tc.spec)
		if got := istioAllows(spec, &tc.c); got != tc.want {
			t.Errorf("case %d %s: got %v, want %v", i, tc.spec, got, tc.want)
		}
	}
}
