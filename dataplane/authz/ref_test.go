package authz_test

import (
	"net/netip"
	"strings"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
)

// refEvaluate is a deliberately naive evaluator written straight from the proto comments, working on the
// uncompiled policies, building the identity strings and comparing address bits by hand. The tests and
// fuzzers check the compiled engine against it. The policies must be valid.
func refEvaluate(policies []*api.Authorization, c *authz.Connection) bool {
	for _, p := range policies {
		if p.GetAction() == api.Action_DENY && refPolicy(p, c) {
			return false
		}
	}
	hasAllow := false
	for _, p := range policies {
		if p.GetAction() == api.Action_ALLOW {
			hasAllow = true
			if refPolicy(p, c) {
				return true
			}
		}
	}
	return !hasAllow
}

func refPolicy(p *api.Authorization, c *authz.Connection) bool {
	for _, r := range p.GetRules() {
		all := true
		for _, cl := range r.GetClauses() {
			anyMatch := false
			for _, m := range cl.GetMatches() {
				if refMatch(m, c) {
					anyMatch = true
				}
			}
			if !anyMatch {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}

func refMatch(m *api.Match, c *authz.Connection) bool {
	var principal, ns, sa *string
	if !c.Source.IsZero() {
		p := c.Source.Principal()
		n := c.Source.Namespace
		s := c.Source.Namespace + "/" + c.Source.ServiceAccount
		principal, ns, sa = &p, &n, &s
	}
	ok := refField(m.GetPrincipals(), m.GetNotPrincipals(), func(e *api.StringMatch) bool { return refString(e, principal) })
	ok = ok && refField(m.GetNamespaces(), m.GetNotNamespaces(), func(e *api.StringMatch) bool { return refString(e, ns) })
	ok = ok && refField(m.GetServiceAccounts(), m.GetNotServiceAccounts(), func(e *api.StringMatch) bool { return refString(e, sa) })
	ok = ok && refField(m.GetSourceIps(), m.GetNotSourceIps(), func(e *api.Cidr) bool { return refCIDR(e, c.SourceAddr) })
	ok = ok && refField(m.GetDestinationIps(), m.GetNotDestinationIps(), func(e *api.Cidr) bool { return refCIDR(e, c.DestinationAddr) })
	ok = ok && refField(m.GetDestinationPorts(), m.GetNotDestinationPorts(), func(p uint32) bool { return p == uint32(c.DestinationPort) })
	return ok
}

func refField[T any](pos, neg []T, pred func(T) bool) bool {
	anyOf := func(l []T) bool {
		for _, e := range l {
			if pred(e) {
				return true
			}
		}
		return false
	}
	if len(pos) > 0 && !anyOf(pos) {
		return false
	}
	if len(neg) > 0 && anyOf(neg) {
		return false
	}
	return true
}

// refString matches v; a nil v (plaintext) matches nothing.
func refString(m *api.StringMatch, v *string) bool {
	if v == nil {
		return false
	}
	switch t := m.GetMatchType().(type) {
	case *api.StringMatch_Exact:
		return *v == t.Exact
	case *api.StringMatch_Prefix:
		return strings.HasPrefix(*v, t.Prefix)
	case *api.StringMatch_Suffix:
		return strings.HasSuffix(*v, t.Suffix)
	case *api.StringMatch_Presence:
		return *v != ""
	}
	panic("invalid StringMatch")
}

// refCIDR compares the first bits of the address and the CIDR, both in their 16-byte form. An IPv4 CIDR
// or address counts as its IPv4-mapped IPv6 form; an IPv6 CIDR shorter than 96 bits does not match IPv4.
func refCIDR(cidr *api.Cidr, addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	addr = addr.Unmap()
	var want [16]byte
	bits := int(cidr.GetLength())
	switch len(cidr.GetAddress()) {
	case 4:
		want = netip.AddrFrom4([4]byte(cidr.GetAddress())).As16()
		bits += 96
	case 16:
		copy(want[:], cidr.GetAddress())
		if addr.Is4() && bits < 96 {
			return false
		}
	default:
		panic("invalid CIDR")
	}
	got := addr.As16()
	for i := range bits {
		mask := byte(0x80) >> (i % 8)
		if got[i/8]&mask != want[i/8]&mask {
			return false
		}
	}
	return true
}
