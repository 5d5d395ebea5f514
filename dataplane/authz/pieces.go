package authz

// pieces is a string held as up to five consecutive pieces, so that the principal
// "<td>/ns/<ns>/sa/<sa>" and the service account "<ns>/<sa>" can be matched without building them (which
// would allocate on every connection).
type pieces struct {
	p   [5]string
	n   int
	len int
}

func (s *pieces) set1(a string) {
	s.p[0] = a
	s.n, s.len = 1, len(a)
}

func (s *pieces) set3(a, b, c string) {
	s.p[0], s.p[1], s.p[2] = a, b, c
	s.n, s.len = 3, len(a)+len(b)+len(c)
}

func (s *pieces) set5(a, b, c, d, e string) {
	s.p = [5]string{a, b, c, d, e}
	s.n, s.len = 5, len(a)+len(b)+len(c)+len(d)+len(e)
}

// hasPrefix reports whether the joined string begins with prefix.
func (s *pieces) hasPrefix(prefix string) bool {
	if len(prefix) > s.len {
		return false
	}
	for i := 0; i < s.n && prefix != ""; i++ {
		p := s.p[i]
		if len(p) >= len(prefix) {
			return p[:len(prefix)] == prefix
		}
		if prefix[:len(p)] != p {
			return false
		}
		prefix = prefix[len(p):]
	}
	return prefix == ""
}

// hasSuffix reports whether the joined string ends with suffix.
func (s *pieces) hasSuffix(suffix string) bool {
	if len(suffix) > s.len {
		return false
	}
	for i := s.n - 1; i >= 0 && suffix != ""; i-- {
		p := s.p[i]
		if len(p) >= len(suffix) {
			return p[len(p)-len(suffix):] == suffix
		}
		if suffix[len(suffix)-len(p):] != p {
			return false
		}
		suffix = suffix[:len(suffix)-len(p)]
	}
	return suffix == ""
}

// equal reports whether the joined string is s2.
func (s *pieces) equal(s2 string) bool {
	return len(s2) == s.len && s.hasPrefix(s2)
}

// matchKind is the kind of a compiled StringMatch.
type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchPresence
)

// stringMatch is a compiled StringMatch.
type stringMatch struct {
	kind  matchKind
	value string
}

func (m *stringMatch) matches(v *pieces) bool {
	switch m.kind {
	case matchExact:
		return v.equal(m.value)
	case matchPrefix:
		return v.hasPrefix(m.value)
	case matchSuffix:
		return v.hasSuffix(m.value)
	default: // matchPresence
		return v.len > 0
	}
}
