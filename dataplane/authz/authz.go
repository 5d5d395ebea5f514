// Package authz is the L4 authorization engine of the data plane: it compiles the compact Authorization
// policies of the xDS API (api/v1alpha1/authorization.proto), selects the ones that apply to a destination
// workload (node proxy) or to a waypoint, and evaluates them on every new connection.
//
// # Evaluation
//
// [Evaluate] follows the design (DESIGN.md section 3, "Authorization (L4)"), which is Istio's order:
//
//  1. any DENY policy that matches denies;
//  2. with no ALLOW policy in the set, the connection is allowed;
//  3. any ALLOW policy that matches allows;
//  4. otherwise the connection is denied.
//
// A policy matches when any of its rules matches (a policy without rules matches nothing, so an ALLOW
// policy without rules denies everything it applies to). A rule matches when all of its clauses match (a
// rule without clauses matches every connection). A clause matches when any of its matches matches (a
// clause without matches matches nothing). A match matches when every non-empty field matches (a match
// without fields matches every connection): a positive list matches when any entry matches, a "not_" list
// when no entry matches. These are the literal semantics of the proto comments. ztunnel (rbac.rs) differs
// on the empty forms: it skips an empty match and counts an empty clause as matching; the xDS server must
// therefore not emit an empty clause or an empty match unless it means the semantics above.
//
// # Plaintext sources
//
// A connection without a peer identity (plaintext, [Connection].Source is the zero identity) has no
// principal, namespace or service account. Like Istio (ISTIO-SECURITY-2021-004: the mTLS-only fields
// "will never match when the traffic is plain text"; ztunnel's rbac.rs evaluates them on the absent
// identity the same way), no entry of principals, namespaces or service_accounts matches it, not even
// presence or an empty prefix, while the not_ forms, which require that no entry matches, do match it.
// Consequences worth knowing when writing policies:
//
//   - an ALLOW rule with principals, namespaces or service_accounts requires mTLS;
//   - an ALLOW rule with only not_principals (or not_namespaces) allows plaintext connections;
//   - a DENY rule with not_principals: [presence] denies every plaintext connection (Istio's documented
//     way to require mTLS: DENY with notPrincipals: ["*"]).
//
// # Addresses
//
// IPv4-mapped IPv6 addresses of a connection (from a dual-stack socket) are matched as the IPv4 addresses
// they map; an IPv6 CIDR does not match an IPv4 address unless it is an IPv4-mapped prefix of at least
// 96 bits. An invalid (zero) address matches no CIDR, so it matches the not_ forms.
//
// # Hot path
//
// [Evaluate] does not allocate and takes no lock. Selecting the policies of a target with [Set.ForWorkload]
// or [Set.ForWaypoint] appends into a caller buffer and does not allocate either when the buffer is large
// enough. A [Set] and its [Policy] values are immutable once built, so they can live in a configuration
// snapshot swapped with atomic.Pointer.
//
// # Revalidation of open connections
//
// A proxy keeps the [Connection] of every open proxied connection (it is a small value without pointers
// into the policies). When a new [Set] is installed it selects the policies of each connection's target
// from the new set and calls [Evaluate] again, closing the connections whose [Decision] is no longer
// Allowed. [SamePolicies] lets it skip connections whose selected policies did not change (compiled
// policies of unchanged resources are kept across sets by the xDS client, so pointer identity is enough).
package authz

import (
	"net/netip"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// Connection describes a new (or open) connection for authorization.
type Connection struct {
	// Source is the peer identity proven by mutual TLS; the zero identity for a plaintext source.
	Source identity.Identity
	// SourceAddr is the source address of the connection.
	SourceAddr netip.Addr
	// DestinationAddr is the address the client connected to (a pod IP or a service VIP).
	DestinationAddr netip.Addr
	// DestinationPort is the port the client connected to.
	DestinationPort uint16
}

// Decision is the outcome of [Evaluate].
type Decision struct {
	// Allowed reports whether the connection may proceed.
	Allowed bool
	// Policy is the "<namespace>/<name>" of the policy that decided, empty when no policy decided (no
	// ALLOW policy applies, or none matched).
	Policy string
	// Reason says why, in a few words, for access logs and the HBONE 401 response.
	Reason string
}

// Reasons of the decisions that no single policy made; a policy's own decisions say "allowed by policy
// <ns>/<name>" or "denied by policy <ns>/<name>".
const (
	// ReasonNoAllowPolicy: no DENY policy matched and no ALLOW policy applies, so the connection is allowed.
	ReasonNoAllowPolicy = "allowed: no ALLOW policy applies"
	// ReasonNoAllowMatch: ALLOW policies apply but none matched, so the connection is denied.
	ReasonNoAllowMatch = "no ALLOW policy matched"
)

// Evaluate decides whether the connection c is allowed by the policies that apply to its target (see the
// package documentation for the order). Nil entries of policies are ignored; c must not be nil. Evaluate
// does not allocate, so it can run on every new connection, and it is deterministic: for the same policies
// in the same order it returns the same decision (Allowed does not depend on the order; the deciding
// Policy is the first matching one).
func Evaluate(policies []*Policy, c *Connection) Decision {
	var src source
	src.init(c)
	hasAllow := false
	for _, p := range policies {
		if p == nil {
			continue
		}
		if p.action != api.Action_DENY {
			hasAllow = true
			continue
		}
		if p.matches(&src) {
			return Decision{Allowed: false, Policy: p.key, Reason: p.reason}
		}
	}
	if !hasAllow {
		return Decision{Allowed: true, Reason: ReasonNoAllowPolicy}
	}
	for _, p := range policies {
		if p != nil && p.action == api.Action_ALLOW && p.matches(&src) {
			return Decision{Allowed: true, Policy: p.key, Reason: p.reason}
		}
	}
	return Decision{Allowed: false, Reason: ReasonNoAllowMatch}
}

// SamePolicies reports whether two selections of policies are the same compiled policies in the same
// order. A proxy revalidating open connections after a configuration change can skip a connection when
// the policies of its target are the same as before: [Evaluate] would decide the same.
func SamePolicies(a, b []*Policy) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Matches reports whether the policy matches the connection, regardless of its action.
func (p *Policy) Matches(c *Connection) bool {
	var src source
	src.init(c)
	return p.matches(&src)
}

// source is what the evaluation needs from a connection, prepared once per evaluation: addresses with
// IPv4-mapped IPv6 addresses unmapped, and the identity strings as pieces (joining them would allocate).
type source struct {
	port       uint16
	plaintext  bool
	srcAddr    netip.Addr
	dstAddr    netip.Addr
	principal  pieces // "<td>/ns/<ns>/sa/<sa>"
	namespace  pieces // "<ns>"
	serviceAcc pieces // "<ns>/<sa>"
}

func (s *source) init(c *Connection) {
	s.port = c.DestinationPort
	s.srcAddr = c.SourceAddr.Unmap()
	s.dstAddr = c.DestinationAddr.Unmap()
	s.plaintext = c.Source.IsZero()
	if s.plaintext {
		return
	}
	id := &c.Source
	s.principal.set5(id.TrustDomain, "/ns/", id.Namespace, "/sa/", id.ServiceAccount)
	s.namespace.set1(id.Namespace)
	s.serviceAcc.set3(id.Namespace, "/", id.ServiceAccount)
}

func (p *Policy) matches(s *source) bool {
	for i := range p.rules {
		if p.rules[i].matches(s) {
			return true
		}
	}
	return false
}

func (r *rule) matches(s *source) bool {
	for i := range r.clauses {
		if !r.clauses[i].matches(s) {
			return false
		}
	}
	return true
}

func (c *clause) matches(s *source) bool {
	for i := range c.anyOf {
		if c.anyOf[i].matches(s) {
			return true
		}
	}
	return false
}

// matches checks the cheap fields first.
func (m *match) matches(s *source) bool {
	port := s.port
	if len(m.destinationPorts) > 0 && !containsPort(m.destinationPorts, port) {
		return false
	}
	if len(m.notDestinationPorts) > 0 && containsPort(m.notDestinationPorts, port) {
		return false
	}
	if len(m.destinationIPs) > 0 && !containsAddr(m.destinationIPs, s.dstAddr) {
		return false
	}
	if len(m.notDestinationIPs) > 0 && containsAddr(m.notDestinationIPs, s.dstAddr) {
		return false
	}
	if len(m.sourceIPs) > 0 && !containsAddr(m.sourceIPs, s.srcAddr) {
		return false
	}
	if len(m.notSourceIPs) > 0 && containsAddr(m.notSourceIPs, s.srcAddr) {
		return false
	}
	if len(m.namespaces) > 0 && !s.matchesAny(m.namespaces, &s.namespace) {
		return false
	}
	if len(m.notNamespaces) > 0 && s.matchesAny(m.notNamespaces, &s.namespace) {
		return false
	}
	if len(m.serviceAccounts) > 0 && !s.matchesAny(m.serviceAccounts, &s.serviceAcc) {
		return false
	}
	if len(m.notServiceAccounts) > 0 && s.matchesAny(m.notServiceAccounts, &s.serviceAcc) {
		return false
	}
	if len(m.principals) > 0 && !s.matchesAny(m.principals, &s.principal) {
		return false
	}
	if len(m.notPrincipals) > 0 && s.matchesAny(m.notPrincipals, &s.principal) {
		return false
	}
	return true
}

// matchesAny reports whether any entry matches the identity string v; nothing matches a plaintext source.
func (s *source) matchesAny(ms []stringMatch, v *pieces) bool {
	if s.plaintext {
		return false
	}
	for i := range ms {
		if ms[i].matches(v) {
			return true
		}
	}
	return false
}

func containsPort(ports []uint16, port uint16) bool {
	for _, p := range ports {
		if p == port {
			return true
		}
	}
	return false
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
