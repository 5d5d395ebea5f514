package identity

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in      string
		want    Identity
		wantErr bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/sleep", want: Identity{"cluster.local", "default", "sleep"}},
		{in: "spiffe://example.org/ns/a-b/sa/c.d_e", want: Identity{"example.org", "a-b", "c.d_e"}},
		{in: "https://cluster.local/ns/default/sa/sleep", wantErr: true},
		{in: "spiffe://cluster.local/ns/default", wantErr: true},
		{in: "spiffe://cluster.local/ns/default/sa/", wantErr: true},
		{in: "spiffe:///ns/default/sa/x", wantErr: true},
		{in: "spiffe://cluster.local/ns/default/sa/x/extra", wantErr: true},
		{in: "spiffe://cluster.local/namespace/default/sa/x", wantErr: true},
		{in: "spiffe://cluster.local/ns/de fault/sa/x", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			g := NewWithT(t)
			got, err := Parse(tc.in)
			if tc.wantErr {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
			g.Expect(got.String()).To(Equal(tc.in))
			g.Expect(got.URL().String()).To(Equal(tc.in))
		})
	}
}

func TestNewDefaultsServiceAccount(t *testing.T) {
	g := NewWithT(t)
	g.Expect(New("td", "ns", "").Principal()).To(Equal("td/ns/ns/sa/default"))
	g.Expect(Identity{}.String()).To(BeEmpty())
	g.Expect(Identity{}.IsZero()).To(BeTrue())
}

func FuzzParse(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/default/sa/sleep")
	f.Add("spiffe://a/ns/b/sa/c/d")
	f.Add("spiffe://")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses must format back to the same string and parse again to the same identity.
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id.String())
		}
		again, err := Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}
