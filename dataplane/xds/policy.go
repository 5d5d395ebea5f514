package xds

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Reasons of policy translation issues: the reason label of ambient_xds_policy_translation_issues_total.
const (
	// ReasonL7AllowRuleDropped: an ALLOW rule uses a field only a L7 proxy can enforce (hosts, methods,
	// paths, requestPrincipals, request.* conditions, ...); the rule is dropped, so what it would have
	// allowed is denied.
	ReasonL7AllowRuleDropped = "l7_allow_rule_dropped"
	// ReasonL7DenyFieldIgnored: a DENY rule uses a L7-only field; the field is ignored and the rest of the
	// rule kept, so the rule denies more than it says.
	ReasonL7DenyFieldIgnored = "l7_deny_field_ignored"
	// ReasonInvalidAllowRuleDropped: an ALLOW rule has a value that cannot be translated (a bad CIDR, port
	// or wildcard, an empty source); the rule is dropped.
	ReasonInvalidAllowRuleDropped = "invalid_allow_rule_dropped"
	// ReasonInvalidDenyFieldIgnored: a DENY rule has a value that cannot be translated; the field is ignored,
	// so the rule denies more.
	ReasonInvalidDenyFieldIgnored = "invalid_deny_field_ignored"
	// ReasonCustomAction: action CUSTOM (external authorization) cannot be enforced at L4; the policy denies
	// every connection in its scope.
	ReasonCustomAction = "custom_action_denies_all"
	// ReasonUnknownAction: an action this translator does not know; the policy denies every connection in
	// its scope.
	ReasonUnknownAction = "unknown_action_denies_all"
	// ReasonAuditAction: action AUDIT only logs; the policy is not sent.
	ReasonAuditAction = "audit_action_ignored"
	// ReasonUnsupportedTarget: a targetRef of a kind other than Service, Gateway or Waypoint, or in another
	// namespace; that target is ignored.
	ReasonUnsupportedTarget = "unsupported_target"
	// ReasonSelectorAndTargetRefs: both selector and targetRefs are set (Istio refuses this); the policy is
	// applied to both, which never allows more than either.
	ReasonSelectorAndTargetRefs = "selector_and_target_refs"
	// ReasonInvalidSelector: selector.matchLabels is malformed; the policy is applied to the whole
	// namespace instead, which never allows more.
	ReasonInvalidSelector = "invalid_selector"
)

// PolicyIssue is one part of an AuthorizationPolicy that the L4 translation could not carry over as
// written. Every issue errs on the side of denying.
type PolicyIssue struct {
	// Field is the path of the field, e.g. "spec.rules[0].to[0].operation.methods".
	Field string
	// Reason is one of the Reason* constants.
	Reason string
	// Message says what was done about it.
	Message string
}

// TranslatedPolicy is the L4 translation of one Istio AuthorizationPolicy.
type TranslatedPolicy struct {
	// Resources are the compact policies to send: none (AUDIT, or no supported target), one, or one per
	// scope when the policy applies at several places (a selector and targetRefs, services and waypoints,
	// several waypoints). The first is named like the policy; the others get a suffix
	// ("<name>~service", "<name>~waypoint~<waypoint>").
	Resources []*api.Authorization
	// Selector is the matchLabels of the WORKLOAD_SELECTOR resource SelectorResource (nil when the policy
	// selects no workloads by label). In the mesh's root namespace it selects pods of every namespace.
	Selector map[string]string
	// SelectorResource is the name of the WORKLOAD_SELECTOR resource.
	SelectorResource string
	// Services are the names of the Services (in the policy's namespace) whose
	// authorization_policies list ServiceResource.
	Services []string
	// ServiceResource is the name of the SERVICE resource.
	ServiceResource string
	// Issues are the parts that were not translated as written.
	Issues []PolicyIssue
}

// Group and kind names of policy targets.
const (
	groupGateway    = "gateway.networking.k8s.io"
	groupAmbient    = "ambient.dev"
	refKindService  = "Service"
	refKindGateway  = "Gateway"
	refKindWaypoint = "Waypoint"
	suffixService   = "~service"
	suffixWaypnt    = "~waypoint~"
)

// TranslatePolicy translates the spec of a security.istio.io AuthorizationPolicy (as decoded from JSON,
// e.g. the "spec" of an unstructured object) into compact L4 policies.
//
// Scope: no selector and no targetRefs apply to the namespace (GLOBAL in rootNamespace, the mesh's
// namespace); selector.matchLabels selects workloads; targetRefs of kind Service bind the policy to those
// services (enforced by their waypoint), of kind Gateway (gateway.networking.k8s.io) or Waypoint
// (ambient.dev) to that waypoint.
//
// Rules: from.source principals, notPrincipals, namespaces, notNamespaces, serviceAccounts,
// notServiceAccounts, trustDomains, notTrustDomains, ipBlocks, notIpBlocks, remoteIpBlocks,
// notRemoteIpBlocks; to.operation ports and notPorts; when conditions on source.ip, remote.ip,
// source.namespace, source.principal, destination.ip and destination.port, with values and notValues.
// Istio's "*" (presence), "prefix*" and "*suffix" wildcards become StringMatch presence, prefix and suffix.
//
// Everything else can only be enforced by a L7 proxy, or is malformed, and never widens access: an ALLOW
// rule that contains it is dropped (the policy stays an ALLOW policy, so what the rule would have allowed is
// denied), a DENY rule keeps its other parts (so it denies more), CUSTOM denies everything in its scope and
// AUDIT is not sent. Each case is listed in Issues.
func TranslatePolicy(namespace, name string, spec map[string]any, rootNamespace string) TranslatedPolicy {
	t := &policyTranslator{}
	var out TranslatedPolicy

	action := api.Action_ALLOW
	denyAll := false
	switch a := spec["action"]; a {
	case nil, "", "ALLOW":
	case "DENY":
		action = api.Action_DENY
	case "AUDIT":
		t.issue("spec.action", ReasonAuditAction, "AUDIT only logs and has no effect on L4 connections: the policy is not sent")
		return TranslatedPolicy{Issues: t.issues}
	case "CUSTOM":
		action, denyAll = api.Action_DENY, true
		t.issue("spec.action", ReasonCustomAction, "CUSTOM (external authorization) cannot be enforced at L4: every connection in the policy's scope is denied")
	default:
		action, denyAll = api.Action_DENY, true
		t.issue("spec.action", ReasonUnknownAction, fmt.Sprintf("unknown action %v: every connection in the policy's scope is denied", a))
	}

	var rules []*api.Rule
	if denyAll {
		rules = []*api.Rule{{}} // a rule without clauses matches every connection
	} else {
		rules = t.rules(spec["rules"], action == api.Action_ALLOW)
	}

	// Scopes, in naming order: the node-proxy scope, then services, then waypoints.
	type scoped struct {
		scope    api.Scope
		suffix   string
		waypoint string
	}
	var scopes []scoped
	selector, hasSelector, selectorOK := matchLabels(spec["selector"])
	if hasSelector && !selectorOK {
		t.issue("spec.selector", ReasonInvalidSelector, "selector.matchLabels is not a map of strings: the policy applies to the whole namespace")
		selector = nil
	}
	services, waypoints, hasTargets := t.targets(namespace, spec)
	if hasTargets && len(selector) > 0 {
		t.issue("spec.selector", ReasonSelectorAndTargetRefs, "selector and targetRefs are both set: the policy applies to the selected workloads and to the targets")
	}
	switch {
	case len(selector) > 0:
		scopes = append(scopes, scoped{scope: api.Scope_WORKLOAD_SELECTOR})
	case !hasTargets || (hasSelector && !selectorOK):
		if namespace == rootNamespace {
			scopes = append(scopes, scoped{scope: api.Scope_GLOBAL})
		} else {
			scopes = append(scopes, scoped{scope: api.Scope_NAMESPACE})
		}
	}
	if len(services) > 0 {
		scopes = append(scopes, scoped{scope: api.Scope_SERVICE, suffix: suffixService})
	}
	for _, w := range waypoints {
		scopes = append(scopes, scoped{scope: api.Scope_WAYPOINT, suffix: suffixWaypnt + w, waypoint: w})
	}

	for i, s := range scopes {
		n := name
		if i > 0 {
			n = name + s.suffix
		}
		// The resources share their rules: translated protos are never modified.
		res := &api.Authorization{Name: n, Namespace: namespace, Scope: s.scope, Action: action, Rules: rules, Waypoint: s.waypoint}
		out.Resources = append(out.Resources, res)
		switch s.scope {
		case api.Scope_WORKLOAD_SELECTOR:
			out.Selector, out.SelectorResource = selector, n
		case api.Scope_SERVICE:
			out.Services, out.ServiceResource = services, n
		}
	}
	out.Issues = t.issues
	return out
}

// matchLabels reads selector.matchLabels: the labels, whether a non-empty selector was given, and whether
// it was well-formed.
func matchLabels(sel any) (map[string]string, bool, bool) {
	if sel == nil {
		return nil, false, true
	}
	m, ok := sel.(map[string]any)
	if !ok {
		return nil, true, false
	}
	raw, present := m["matchLabels"]
	if !present || raw == nil {
		return nil, false, true
	}
	ml, ok := raw.(map[string]any)
	if !ok {
		return nil, true, false
	}
	if len(ml) == 0 {
		return nil, false, true
	}
	out := make(map[string]string, len(ml))
	for k, v := range ml {
		s, ok := v.(string)
		if !ok {
			return nil, true, false
		}
		out[k] = s
	}
	return out, true, true
}

// targets reads targetRef and targetRefs: the names of the targeted Services and waypoints (sorted,
// unique), and whether any target was given at all (even an unsupported one).
func (t *policyTranslator) targets(namespace string, spec map[string]any) (services, waypoints []string, found bool) {
	var refs []any
	var paths []string
	if r, ok := spec["targetRef"]; ok && r != nil {
		refs, paths = append(refs, r), append(paths, "spec.targetRef")
	}
	if rs, ok := spec["targetRefs"].([]any); ok {
		for i, r := range rs {
			refs, paths = append(refs, r), append(paths, fmt.Sprintf("spec.targetRefs[%d]", i))
		}
	} else if r, ok := spec["targetRefs"]; ok && r != nil {
		refs, paths = append(refs, nil), append(paths, "spec.targetRefs")
	}
	for i, r := range refs {
		found = true
		m, _ := r.(map[string]any)
		group, _ := m["group"].(string)
		kind, _ := m["kind"].(string)
		name, _ := m["name"].(string)
		ns, _ := m["namespace"].(string)
		switch {
		case m == nil || name == "" || strings.Contains(name, "/"):
			t.issue(paths[i], ReasonUnsupportedTarget, "malformed target reference: ignored")
		case ns != "" && ns != namespace:
			t.issue(paths[i], ReasonUnsupportedTarget, fmt.Sprintf("target in another namespace (%s): ignored", ns))
		case kind == refKindService && (group == "" || group == "core"):
			services = append(services, name)
		case (kind == refKindGateway && group == groupGateway) || (kind == refKindWaypoint && group == groupAmbient):
			waypoints = append(waypoints, name)
		default:
			t.issue(paths[i], ReasonUnsupportedTarget, fmt.Sprintf("target kind %q of group %q is not supported (Service, Gateway, Waypoint): ignored", kind, group))
		}
	}
	sort.Strings(services)
	sort.Strings(waypoints)
	return slices.Compact(services), slices.Compact(waypoints), found
}

// policyTranslator collects the issues of one policy.
type policyTranslator struct {
	issues []PolicyIssue
}

func (t *policyTranslator) issue(field, reason, msg string) {
	t.issues = append(t.issues, PolicyIssue{Field: field, Reason: reason, Message: msg})
}

// ruleState tracks one rule: whether it is an ALLOW rule and whether it must be dropped.
type ruleState struct {
	t     *policyTranslator
	allow bool
	drop  bool
}

// unenforceable records a field that cannot be enforced at L4 (l7) or not translated (invalid). The
// caller leaves the field out, which is right for a DENY rule (it matches more); an ALLOW rule is dropped.
func (r *ruleState) unenforceable(field string, l7 bool, what string) {
	var reason, msg string
	switch {
	case r.allow && l7:
		reason, msg = ReasonL7AllowRuleDropped, what+" is only enforceable at L7: the ALLOW rule is dropped"
	case r.allow:
		reason, msg = ReasonInvalidAllowRuleDropped, what+": the ALLOW rule is dropped"
	case l7:
		reason, msg = ReasonL7DenyFieldIgnored, what+" is only enforceable at L7: the DENY rule applies without it"
	default:
		reason, msg = ReasonInvalidDenyFieldIgnored, what+": the DENY rule applies without it"
	}
	r.drop = r.drop || r.allow
	r.t.issue(field, reason, msg)
}

func (t *policyTranslator) rules(raw any, allow bool) []*api.Rule {
	if raw == nil {
		return nil
	}
	list, ok := raw.([]any)
	if !ok {
		rs := &ruleState{t: t, allow: allow}
		rs.unenforceable("spec.rules", false, "rules is not a list")
		if allow {
			return nil
		}
		return []*api.Rule{{}}
	}
	out := make([]*api.Rule, 0, len(list))
	for i, r := range list {
		path := fmt.Sprintf("spec.rules[%d]", i)
		rs := &ruleState{t: t, allow: allow}
		rule := rs.rule(path, r)
		if !rs.drop {
			out = append(out, rule)
		}
	}
	return out
}

func (r *ruleState) rule(path string, raw any) *api.Rule {
	out := &api.Rule{}
	m, ok := raw.(map[string]any)
	if !ok {
		// Istio refuses a null or malformed rule; a DENY rule without conditions matches everything.
		r.unenforceable(path, false, "rule is not an object")
		return out
	}
	for _, k := range sortedKeys(m) {
		v := m[k]
		fpath := path + "." + k
		switch k {
		case "from":
			if c := r.listClause(fpath, v, "source", r.source); c != nil {
				out.Clauses = append(out.Clauses, c)
			}
		case "to":
			if c := r.listClause(fpath, v, "operation", r.operation); c != nil {
				out.Clauses = append(out.Clauses, c)
			}
		case "when":
			list, ok := v.([]any)
			if !ok && v != nil {
				r.unenforceable(fpath, false, "when is not a list")
				continue
			}
			for i, cond := range list {
				if c := r.condition(fmt.Sprintf("%s[%d]", fpath, i), cond); c != nil {
					out.Clauses = append(out.Clauses, c)
				}
			}
		default:
			r.unenforceable(fpath, true, "field "+k)
		}
	}
	return out
}

// listClause translates "from" or "to": a list of {<key>: {...}}, any of which matches. It returns nil
// when the list is empty (no condition) or when, for a DENY rule, an entry matches everything.
func (r *ruleState) listClause(path string, raw any, key string, entry func(string, map[string]any) *api.Match) *api.Clause {
	if raw == nil {
		return nil
	}
	list, ok := raw.([]any)
	if !ok {
		r.unenforceable(path, false, path[strings.LastIndex(path, ".")+1:]+" is not a list")
		return nil
	}
	if len(list) == 0 {
		return nil
	}
	c := &api.Clause{}
	all := false
	for i, e := range list {
		epath := fmt.Sprintf("%s[%d]", path, i)
		em, ok := e.(map[string]any)
		if !ok {
			r.unenforceable(epath, false, "entry is not an object")
			all = true
			continue
		}
		for _, k := range sortedKeys(em) {
			if k != key {
				r.unenforceable(epath+"."+k, true, "field "+k)
			}
		}
		inner, ok := em[key].(map[string]any)
		if !ok || len(inner) == 0 {
			r.unenforceable(epath+"."+key, false, key+" is missing or empty")
			all = true
			continue
		}
		before := len(r.t.issues)
		m := entry(epath+"."+key, inner)
		if isEmptyMatch(m) {
			if len(r.t.issues) == before {
				// e.g. "source: {principals: []}": Istio refuses it; an ALLOW must not read it as "anyone".
				r.unenforceable(epath+"."+key, false, key+" has no conditions")
			}
			all = true
			continue
		}
		c.Matches = append(c.Matches, m)
	}
	if all {
		// An entry without L4 conditions matches every connection, and so does the clause. (An ALLOW rule
		// only gets here with rs.drop set, and is dropped.)
		return nil
	}
	return c
}

func isEmptyMatch(m *api.Match) bool {
	return len(m.Principals)+len(m.NotPrincipals)+len(m.Namespaces)+len(m.NotNamespaces)+
		len(m.ServiceAccounts)+len(m.NotServiceAccounts)+len(m.SourceIps)+len(m.NotSourceIps)+
		len(m.DestinationIps)+len(m.NotDestinationIps)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// source translates from[].source.
func (r *ruleState) source(path string, src map[string]any) *api.Match {
	m := &api.Match{}
	for _, k := range sortedKeys(src) {
		v := src[k]
		fpath := path + "." + k
		switch k {
		case "principals":
			m.Principals = r.stringMatches(fpath, v, m.Principals)
		case "notPrincipals":
			m.NotPrincipals = r.stringMatches(fpath, v, m.NotPrincipals)
		case "namespaces":
			m.Namespaces = r.stringMatches(fpath, v, nil)
		case "notNamespaces":
			m.NotNamespaces = r.stringMatches(fpath, v, nil)
		case "serviceAccounts":
			m.ServiceAccounts = r.serviceAccounts(fpath, v)
		case "notServiceAccounts":
			m.NotServiceAccounts = r.serviceAccounts(fpath, v)
		case "ipBlocks":
			m.SourceIps = r.cidrs(fpath, v, m.SourceIps)
		case "notIpBlocks", "notRemoteIpBlocks":
			// Negative lists combine: the source must be in none of them.
			m.NotSourceIps = r.cidrs(fpath, v, m.NotSourceIps)
		case "remoteIpBlocks":
			// At L4 the remote address is the source address. Two positive lists of the same field must
			// both match, which one list cannot say: with ipBlocks also set, remoteIpBlocks is unenforceable.
			if l, _ := src["ipBlocks"].([]any); len(l) > 0 {
				if vl, _ := v.([]any); len(vl) > 0 {
					r.unenforceable(fpath, false, "remoteIpBlocks together with ipBlocks")
				}
				continue
			}
			m.SourceIps = r.cidrs(fpath, v, m.SourceIps)
		case "trustDomains":
			// A trust domain is a principal prefix; it cannot be combined with principals in one list.
			if l, _ := src["principals"].([]any); len(l) > 0 {
				if vl, _ := v.([]any); len(vl) > 0 {
					r.unenforceable(fpath, false, "trustDomains together with principals")
				}
				continue
			}
			m.Principals = r.trustDomains(fpath, v, m.Principals)
		case "notTrustDomains":
			m.NotPrincipals = r.trustDomains(fpath, v, m.NotPrincipals)
		case "requestPrincipals", "notRequestPrincipals":
			if !emptyList(v) {
				r.unenforceable(fpath, true, "field "+k)
			}
		default:
			if !emptyList(v) {
				r.unenforceable(fpath, true, "field "+k)
			}
		}
	}
	return m
}

// operation translates to[].operation.
func (r *ruleState) operation(path string, op map[string]any) *api.Match {
	m := &api.Match{}
	for _, k := range sortedKeys(op) {
		v := op[k]
		fpath := path + "." + k
		switch k {
		case "ports":
			m.DestinationPorts = r.ports(fpath, v)
		case "notPorts":
			m.NotDestinationPorts = r.ports(fpath, v)
		default: // hosts, notHosts, methods, notMethods, paths, notPaths, and anything newer
			if !emptyList(v) {
				r.unenforceable(fpath, true, "field "+k)
			}
		}
	}
	return m
}

// condition translates one when[] entry into a clause of its own (all conditions must hold). It returns nil
// when the condition is left out (DENY) or the rule is dropped (ALLOW).
func (r *ruleState) condition(path string, raw any) *api.Clause {
	c, ok := raw.(map[string]any)
	if !ok {
		r.unenforceable(path, false, "condition is not an object")
		return nil
	}
	key, _ := c["key"].(string)
	values, hasValues := c["values"]
	notValues, hasNot := c["notValues"]
	if emptyList(values) {
		hasValues = false
	}
	if emptyList(notValues) {
		hasNot = false
	}
	if !hasValues && !hasNot {
		r.unenforceable(path, false, "condition "+strconv.Quote(key)+" without values or notValues")
		return nil
	}
	for _, k := range sortedKeys(c) {
		if k != "key" && k != "values" && k != "notValues" {
			r.unenforceable(path+"."+k, true, "field "+k)
		}
	}
	m := &api.Match{}
	vpath, npath := path+".values", path+".notValues"
	switch key {
	case "source.ip", "remote.ip":
		if hasValues {
			m.SourceIps = r.cidrs(vpath, values, nil)
		}
		if hasNot {
			m.NotSourceIps = r.cidrs(npath, notValues, nil)
		}
	case "destination.ip":
		if hasValues {
			m.DestinationIps = r.cidrs(vpath, values, nil)
		}
		if hasNot {
			m.NotDestinationIps = r.cidrs(npath, notValues, nil)
		}
	case "destination.port":
		if hasValues {
			m.DestinationPorts = r.ports(vpath, values)
		}
		if hasNot {
			m.NotDestinationPorts = r.ports(npath, notValues)
		}
	case "source.namespace":
		if hasValues {
			m.Namespaces = r.stringMatches(vpath, values, nil)
		}
		if hasNot {
			m.NotNamespaces = r.stringMatches(npath, notValues, nil)
		}
	case "source.principal":
		if hasValues {
			m.Principals = r.stringMatches(vpath, values, nil)
		}
		if hasNot {
			m.NotPrincipals = r.stringMatches(npath, notValues, nil)
		}
	default:
		r.unenforceable(path+".key", true, "condition "+strconv.Quote(key))
		return nil
	}
	if isEmptyMatch(m) {
		return nil
	}
	return &api.Clause{Matches: []*api.Match{m}}
}

func emptyList(v any) bool {
	if v == nil {
		return true
	}
	l, ok := v.([]any)
	return ok && len(l) == 0
}

// strings reads a list of strings; a list with a non-string entry (or not a list) is invalid.
func (r *ruleState) strings(path string, v any) ([]string, bool) {
	list, ok := v.([]any)
	if !ok {
		if v != nil {
			r.unenforceable(path, false, "not a list of strings")
			return nil, false
		}
		return nil, true
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, "not a string")
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// stringMatches translates Istio string values with "*" wildcards and appends them to dst. On any invalid
// entry the whole field is left out (see unenforceable) and dst is returned as it was.
func (r *ruleState) stringMatches(path string, v any, dst []*api.StringMatch) []*api.StringMatch {
	vals, ok := r.strings(path, v)
	if !ok {
		return dst
	}
	out := make([]*api.StringMatch, 0, len(vals))
	for i, s := range vals {
		sm, ok := wildcardMatch(s)
		if !ok {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, fmt.Sprintf("value %q: only \"*\", \"prefix*\" and \"*suffix\" wildcards are supported", s))
			return dst
		}
		out = append(out, sm)
	}
	return append(dst, out...)
}

// wildcardMatch turns an Istio string value into a StringMatch: "*" is presence, "x*" a prefix, "*x" a
// suffix, anything else without "*" an exact match.
func wildcardMatch(s string) (*api.StringMatch, bool) {
	switch n := strings.Count(s, "*"); {
	case s == "*":
		return &api.StringMatch{MatchType: &api.StringMatch_Presence{Presence: true}}, true
	case n == 0:
		return &api.StringMatch{MatchType: &api.StringMatch_Exact{Exact: s}}, true
	case n == 1 && strings.HasSuffix(s, "*"):
		return &api.StringMatch{MatchType: &api.StringMatch_Prefix{Prefix: strings.TrimSuffix(s, "*")}}, true
	case n == 1 && strings.HasPrefix(s, "*"):
		return &api.StringMatch{MatchType: &api.StringMatch_Suffix{Suffix: strings.TrimPrefix(s, "*")}}, true
	default:
		return nil, false
	}
}

// serviceAccounts translates "<namespace>/<name>" entries into exact matches.
func (r *ruleState) serviceAccounts(path string, v any) []*api.StringMatch {
	vals, ok := r.strings(path, v)
	if !ok {
		return nil
	}
	out := make([]*api.StringMatch, 0, len(vals))
	for i, s := range vals {
		ns, name, found := strings.Cut(s, "/")
		if !found || ns == "" || name == "" || strings.Contains(name, "/") || strings.Contains(s, "*") {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, fmt.Sprintf("service account %q is not \"<namespace>/<name>\"", s))
			return nil
		}
		out = append(out, &api.StringMatch{MatchType: &api.StringMatch_Exact{Exact: s}})
	}
	return out
}

// trustDomains translates trust domains into principal prefixes "<td>/" appended to dst.
func (r *ruleState) trustDomains(path string, v any, dst []*api.StringMatch) []*api.StringMatch {
	vals, ok := r.strings(path, v)
	if !ok {
		return dst
	}
	out := make([]*api.StringMatch, 0, len(vals))
	for i, s := range vals {
		if s == "" || strings.ContainsAny(s, "/*") {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, fmt.Sprintf("trust domain %q", s))
			return dst
		}
		out = append(out, &api.StringMatch{MatchType: &api.StringMatch_Prefix{Prefix: s + "/"}})
	}
	return append(dst, out...)
}

// cidrs translates addresses and CIDRs and appends them to dst.
func (r *ruleState) cidrs(path string, v any, dst []*api.Cidr) []*api.Cidr {
	vals, ok := r.strings(path, v)
	if !ok {
		return dst
	}
	out := make([]*api.Cidr, 0, len(vals))
	for i, s := range vals {
		c, err := parseCIDR(s)
		if err != nil {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, err.Error())
			return dst
		}
		out = append(out, c)
	}
	return append(dst, out...)
}

// parseCIDR parses "1.2.3.4", "1.2.3.0/24", "2001:db8::/32" into a Cidr (host bits cleared).
func parseCIDR(s string) (*api.Cidr, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return nil, fmt.Errorf("invalid CIDR %q", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("invalid IP address %q", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Zone() != "" {
		return nil, fmt.Errorf("invalid CIDR %q", s)
	}
	p = p.Masked()
	return &api.Cidr{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}, nil // #nosec G115 -- 0..128
}

// ports translates port numbers.
func (r *ruleState) ports(path string, v any) []uint32 {
	list, ok := v.([]any)
	if !ok {
		if v != nil {
			r.unenforceable(path, false, "not a list of ports")
		}
		return nil
	}
	out := make([]uint32, 0, len(list))
	for i, e := range list {
		p, ok := port(e)
		if !ok {
			r.unenforceable(fmt.Sprintf("%s[%d]", path, i), false, fmt.Sprintf("invalid port %v", e))
			return nil
		}
		out = append(out, p)
	}
	return out
}

// port parses a port number as Istio writes it: a decimal string, 1-65535.
func port(v any) (uint32, bool) {
	str, ok := v.(string)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(str, 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint32(n), true
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
