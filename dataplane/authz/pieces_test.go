package authz

import (
	"strings"
	"testing"
)

func TestPieces(t *testing.T) {
	var p pieces
	p.set5("cluster.local", "/ns/", "frontend", "/sa/", "web")
	whole := "cluster.local/ns/frontend/sa/web"
	for i := 0; i <= len(whole); i++ {
		if !p.hasPrefix(whole[:i]) {
			t.Errorf("hasPrefix(%q) = false", whole[:i])
		}
		if !p.hasSuffix(whole[i:]) {
			t.Errorf("hasSuffix(%q) = false", whole[i:])
		}
		if p.equal(whole[:i]) != (i == len(whole)) {
			t.Errorf("equal(%q) wrong", whole[:i])
		}
	}
	for _, s := range []string{"cluster.local/ns/frontend/sa/webx", "xcluster", "cluster.local/ns/frontenD", "/sa/wex", "a/ns/frontend/sa/web"} {
		if p.hasPrefix(s) && p.hasSuffix(s) {
			t.Errorf("%q matched both ways", s)
		}
		if p.equal(s) {
			t.Errorf("equal(%q) = true", s)
		}
	}
}

// FuzzPieces checks the piecewise matching against the strings package on the joined string.
func FuzzPieces(f *testing.F) {
	f.Add("cluster.local", "frontend", "web", "cluster.local/ns/f")
	f.Add("", "", "", "")
	f.Add("td", "ns", "sa", "/sa/sa")
	f.Add("a", "b", "c", "a/ns/b/sa/c")
	f.Fuzz(func(t *testing.T, td, ns, sa, s string) {
		cases := []struct {
			p     pieces
			whole string
		}{
			{whole: td + "/ns/" + ns + "/sa/" + sa},
			{whole: ns + "/" + sa},
			{whole: ns},
		}
		cases[0].p.set5(td, "/ns/", ns, "/sa/", sa)
		cases[1].p.set3(ns, "/", sa)
		cases[2].p.set1(ns)
		for _, c := range cases {
			// Also every substring of the whole, so that boundaries are exercised.
			probes := []string{s, c.whole}
			if len(s) > 0 && len(c.whole) > 0 {
				i := int(s[0]) % (len(c.whole) + 1)
				probes = append(probes, c.whole[:i], c.whole[i:])
			}
			for _, q := range probes {
				if got, want := c.p.hasPrefix(q), strings.HasPrefix(c.whole, q); got != want {
					t.Fatalf("hasPrefix(%q) of %q = %v", q, c.whole, got)
				}
				if got, want := c.p.hasSuffix(q), strings.HasSuffix(c.whole, q); got != want {
					t.Fatalf("hasSuffix(%q) of %q = %v", q, c.whole, got)
				}
				if got, want := c.p.equal(q), c.whole == q; got != want {
					t.Fatalf("equal(%q) of %q = %v", q, c.whole, got)
				}
			}
			if c.p.len != len(c.whole) {
				t.Fatalf("len %d of %q", c.p.len, c.whole)
			}
		}
	})
}
