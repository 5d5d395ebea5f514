package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Policy is a compiled, validated Authorization. It is immutable and safe for concurrent use.
type Policy struct {
	key       string // "<namespace>/<name>"
	name      string
	namespace string
	scope     api.Scope
	action    api.Action
	waypoint  string // "<namespace>/<name>" of the waypoint's Service, for scope WAYPOINT
	reason    string // of a decision made by this policy
	rules     []rule
}

type rule struct{ clauses []clause }

type clause struct{ anyOf []match }

type match struct {
	principals, notPrincipals             []stringMatch
	namespaces, notNamespaces             []stringMatch
	serviceAccounts, notServiceAccounts   []stringMatch
	sourceIPs, notSourceIPs               []netip.Prefix
	destinationIPs, notDestinationIPs     []netip.Prefix
	destinationPorts, notDestinationPorts []uint16
}

// Key returns "<namespace>/<name>", the xDS resource name of the policy.
func (p *Policy) Key() string { return p.key }

// Name returns the name of the policy.
func (p *Policy) Name() string { return p.name }

// Namespace returns the namespace of the policy.
func (p *Policy) Namespace() string { return p.namespace }

// Scope returns the scope of the policy.
func (p *Policy) Scope() api.Scope { return p.scope }

// Action returns the action of the policy.
func (p *Policy) Action() api.Action { return p.action }

// Waypoint returns the "<namespace>/<name>" of the waypoint a WAYPOINT-scope policy applies to (resolved
// relative to the policy's namespace), or "" for the other scopes.
func (p *Policy) Waypoint() string { return p.waypoint }

// maxErrors bounds the number of problems one compile error lists.
const maxErrors = 10

// compiler collects the problems of one policy.
type compiler struct {
	errs    []string
	dropped int
}

func (c *compiler) errorf(path, format string, args ...any) {
	if len(c.errs) == maxErrors {
		c.dropped++
		return
	}
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	c.errs = append(c.errs, msg)
}

// Compile validates an Authorization and compiles it for evaluation. The error names the policy
// ("<namespace>/<name>") and the path of each invalid field, e.g.
//
//	authorization policy "ns/name": rules[1].clauses[0].matches[2].source_ips[0]: prefix length 33 exceeds 32
//
// so that the xDS client can NACK the resource with it. Compile rejects: an empty name or namespace (or one
// containing "/"), an unknown scope or action, a WAYPOINT-scope policy without a valid waypoint
// ("<name>" or "<namespace>/<name>"), nil rules, clauses, matches or CIDRs, a StringMatch without a match
// type, an address that is not 4 or 16 bytes, a prefix length beyond the address size, and ports 0 or
// above 65535. Host bits set in a CIDR are accepted and masked; a 16-byte IPv4-mapped address with a
// prefix length of at least 96 is treated as the IPv4 prefix it maps.
func Compile(p *api.Authorization) (*Policy, error) {
	if p == nil {
		return nil, errors.New("authorization policy is nil")
	}
	var c compiler
	out := &Policy{
		name:      p.GetName(),
		namespace: p.GetNamespace(),
		scope:     p.GetScope(),
		action:    p.GetAction(),
	}
	out.key = out.namespace + "/" + out.name
	checkName(&c, "name", out.name)
	checkName(&c, "namespace", out.namespace)
	switch out.scope {
	case api.Scope_WORKLOAD_SELECTOR, api.Scope_NAMESPACE, api.Scope_GLOBAL, api.Scope_SERVICE:
	case api.Scope_WAYPOINT:
		out.waypoint = compileWaypoint(&c, out.namespace, p.GetWaypoint())
	default:
		c.errorf("scope", "unknown scope %d; want WORKLOAD_SELECTOR, NAMESPACE, GLOBAL, SERVICE or WAYPOINT", int32(out.scope))
	}
	switch out.action {
	case api.Action_ALLOW:
		out.reason = "allowed by policy " + out.key
	case api.Action_DENY:
		out.reason = "denied by policy " + out.key
	default:
		c.errorf("action", "unknown action %d; want ALLOW or DENY", int32(out.action))
	}
	if n := len(p.GetRules()); n > 0 {
		out.rules = make([]rule, n)
	}
	for i, r := range p.GetRules() {
		path := fmt.Sprintf("rules[%d]", i)
		if r == nil {
			c.errorf(path, "rule is nil")
			continue
		}
		out.rules[i] = compileRule(&c, path, r)
	}
	if len(c.errs) > 0 {
		msg := strings.Join(c.errs, "; ")
		if c.dropped > 0 {
			msg += fmt.Sprintf("; and %d more", c.dropped)
		}
		return nil, fmt.Errorf("authorization policy %q: %s", out.key, msg)
	}
	return out, nil
}

func checkName(c *compiler, field, v string) {
	switch {
	case v == "":
		c.errorf(field, "must not be empty")
	case strings.Contains(v, "/"):
		c.errorf(field, "%q must not contain \"/\"", v)
	}
}

// compileWaypoint resolves a waypoint reference relative to the policy's namespace.
func compileWaypoint(c *compiler, namespace, ref string) string {
	if ref == "" {
		c.errorf("waypoint", "must be set for scope WAYPOINT: the waypoint's Service as \"<name>\" or \"<namespace>/<name>\"")
		return ""
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok {
		return namespace + "/" + ref
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		c.errorf("waypoint", "%q is not \"<name>\" or \"<namespace>/<name>\"", ref)
		return ""
	}
	return ref
}

func compileRule(c *compiler, path string, r *api.Rule) rule {
	var out rule
	if n := len(r.GetClauses()); n > 0 {
		out.clauses = make([]clause, n)
	}
	for i, cl := range r.GetClauses() {
		cpath := fmt.Sprintf("%s.clauses[%d]", path, i)
		if cl == nil {
			c.errorf(cpath, "clause is nil")
			continue
		}
		if n := len(cl.GetMatches()); n > 0 {
			out.clauses[i].anyOf = make([]match, n)
		}
		for j, m := range cl.GetMatches() {
			mpath := fmt.Sprintf("%s.matches[%d]", cpath, j)
			if m == nil {
				c.errorf(mpath, "match is nil")
				continue
			}
			out.clauses[i].anyOf[j] = compileMatch(c, mpath, m)
		}
	}
	return out
}

func compileMatch(c *compiler, path string, m *api.Match) match {
	return match{
		principals:          compileStrings(c, path, "principals", m.GetPrincipals()),
		notPrincipals:       compileStrings(c, path, "not_principals", m.GetNotPrincipals()),
		namespaces:          compileStrings(c, path, "namespaces", m.GetNamespaces()),
		notNamespaces:       compileStrings(c, path, "not_namespaces", m.GetNotNamespaces()),
		serviceAccounts:     compileStrings(c, path, "service_accounts", m.GetServiceAccounts()),
		notServiceAccounts:  compileStrings(c, path, "not_service_accounts", m.GetNotServiceAccounts()),
		sourceIPs:           compileCIDRs(c, path, "source_ips", m.GetSourceIps()),
		notSourceIPs:        compileCIDRs(c, path, "not_source_ips", m.GetNotSourceIps()),
		destinationIPs:      compileCIDRs(c, path, "destination_ips", m.GetDestinationIps()),
		notDestinationIPs:   compileCIDRs(c, path, "not_destination_ips", m.GetNotDestinationIps()),
		destinationPorts:    compilePorts(c, path, "destination_ports", m.GetDestinationPorts()),
		notDestinationPorts: compilePorts(c, path, "not_destination_ports", m.GetNotDestinationPorts()),
	}
}

func compileStrings(c *compiler, path, field string, in []*api.StringMatch) []stringMatch {
	if len(in) == 0 {
		return nil
	}
	out := make([]stringMatch, 0, len(in))
	for i, sm := range in {
		switch t := sm.GetMatchType().(type) {
		case *api.StringMatch_Exact:
			out = append(out, stringMatch{kind: matchExact, value: t.Exact})
		case *api.StringMatch_Prefix:
			out = append(out, stringMatch{kind: matchPrefix, value: t.Prefix})
		case *api.StringMatch_Suffix:
			out = append(out, stringMatch{kind: matchSuffix, value: t.Suffix})
		case *api.StringMatch_Presence:
			// The value of presence is not looked at (as in ztunnel): a set oneof selects presence.
			out = append(out, stringMatch{kind: matchPresence})
		default:
			c.errorf(fmt.Sprintf("%s.%s[%d]", path, field, i), "empty StringMatch: set one of exact, prefix, suffix or presence")
		}
	}
	return out
}

func compileCIDRs(c *compiler, path, field string, in []*api.Cidr) []netip.Prefix {
	if len(in) == 0 {
		return nil
	}
	out := make([]netip.Prefix, 0, len(in))
	for i, cidr := range in {
		fpath := fmt.Sprintf("%s.%s[%d]", path, field, i)
		if cidr == nil {
			c.errorf(fpath, "CIDR is nil")
			continue
		}
		pfx, err := compileCIDR(cidr)
		if err != nil {
			c.errorf(fpath, "%s", err.Error())
			continue
		}
		out = append(out, pfx)
	}
	return out
}

func compileCIDR(cidr *api.Cidr) (netip.Prefix, error) {
	raw, length := cidr.GetAddress(), cidr.GetLength()
	addr, ok := netip.AddrFromSlice(raw)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("address has %d bytes; want 4 (IPv4) or 16 (IPv6)", len(raw))
	}
	maxBits := uint32(32)
	if addr.Is6() {
		maxBits = 128
	}
	if length > maxBits {
		return netip.Prefix{}, fmt.Errorf("prefix length %d exceeds %d", length, maxBits)
	}
	bits := int(length)
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits).Masked(), nil
}

func compilePorts(c *compiler, path, field string, in []uint32) []uint16 {
	if len(in) == 0 {
		return nil
	}
	out := make([]uint16, 0, len(in))
	for i, p := range in {
		if p == 0 || p > 65535 {
			c.errorf(fmt.Sprintf("%s.%s[%d]", path, field, i), "port %d is not in 1-65535", p)
			continue
		}
		out = append(out, uint16(p)) // #nosec G115 -- checked above.
	}
	return out
}
