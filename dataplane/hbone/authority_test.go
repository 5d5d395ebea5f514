package hbone

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
)

func TestParseAuthority(t *testing.T) {
	cases := []struct {
		in   string
		want string // empty: error
	}{
		{"10.0.0.1:80", "10.0.0.1:80"},
		{"[fd00::1]:8080", "[fd00::1]:8080"},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1:80"},
		{"not-an-ip:80", ""},
		{"10.0.0.1", ""},
		{"[::1]:99999", ""},
		{"10.0.0.1:0", ""},
		{"[fe80::1%eth0]:80", ""},
		{"fd00::1:80", ""},
		{"010.0.0.1:80", ""},
		{"", ""},
		{":80", ""},
		{"10.0.0.1:80/x", ""},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ParseAuthority(tc.in)
			if tc.want == "" {
				g.Expect(err).To(MatchError(ErrBadAuthority))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.String()).To(Equal(tc.want))
		})
	}
}

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:443", "[::ffff:1.2.3.4]:1", "not-an-ip:80", "[::1]:99999", "1.2.3.4", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() {
			t.Fatalf("ParseAuthority(%q) = %v: not a plain address and port", s, ap)
		}
		again, err := ParseAuthority(ap.String())
		if err != nil || again != ap {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
		if want, _ := netip.ParseAddrPort(s); want.Addr().Unmap() != ap.Addr() {
			t.Fatalf("ParseAuthority(%q) = %v, netip says %v", s, ap, want)
		}
	})
}
