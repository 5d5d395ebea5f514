package authz_test

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/dataplane/authz"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// TestMain fails the run when tests leave goroutines behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(2 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to timeout for the goroutines other than the caller and those of the runtime
// and the testing package (the fuzzing coordinator's signal handler) to end, and returns their stacks.
func leakedGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i == 0 || strings.Contains(g, "os/signal.") || strings.Contains(g, "testing.") {
				continue
			}
			leaked = append(leaked, g)
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Builders of policies, terse enough for tables.

func exact(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Prefix{Prefix: s}}
}

func suffix(s string) *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Suffix{Suffix: s}}
}

func presence() *api.StringMatch {
	return &api.StringMatch{MatchType: &api.StringMatch_Presence{Presence: true}}
}

// cidr parses "addr/len" without masking, so that host bits reach Compile.
func cidr(s string) *api.Cidr {
	a, l, ok := strings.Cut(s, "/")
	if !ok {
		panic("cidr without length: " + s)
	}
	var n uint32
	if _, err := fmt.Sscan(l, &n); err != nil {
		panic(err)
	}
	return &api.Cidr{Address: netip.MustParseAddr(a).AsSlice(), Length: n}
}

// rule builds a rule of clauses, each clause a list of matches.
func rule(clauses ...[]*api.Match) *api.Rule {
	r := &api.Rule{}
	for _, ms := range clauses {
		r.Clauses = append(r.Clauses, &api.Clause{Matches: ms})
	}
	return r
}

// anyOf is a clause: its matches are ORed.
func anyOf(ms ...*api.Match) []*api.Match { return ms }

// when is a rule with a single clause of a single match.
func when(m *api.Match) *api.Rule { return rule(anyOf(m)) }

func allow(key string, rules ...*api.Rule) *api.Authorization {
	return policy(key, api.Scope_GLOBAL, api.Action_ALLOW, rules...)
}

func deny(key string, rules ...*api.Rule) *api.Authorization {
	return policy(key, api.Scope_GLOBAL, api.Action_DENY, rules...)
}

func policy(key string, scope api.Scope, action api.Action, rules ...*api.Rule) *api.Authorization {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		panic("policy key without namespace: " + key)
	}
	return &api.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action, Rules: rules}
}

func waypointPolicy(key, waypoint string, action api.Action, rules ...*api.Rule) *api.Authorization {
	p := policy(key, api.Scope_WAYPOINT, action, rules...)
	p.Waypoint = waypoint
	return p
}

func mustCompile(t testing.TB, ps ...*api.Authorization) []*authz.Policy {
	t.Helper()
	out := make([]*authz.Policy, 0, len(ps))
	for _, p := range ps {
		c, err := authz.Compile(p)
		if err != nil {
			t.Fatalf("compile: %v", err)
		}
		out = append(out, c)
	}
	return out
}

func keys(ps []*authz.Policy) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Key())
	}
	return out
}

// Identities and connections of the tests.
var (
	web       = identity.New("cluster.local", "frontend", "web")
	api1      = identity.New("cluster.local", "backend", "api")
	plaintext = identity.Identity{}
)

// conn is a connection from web at 10.1.0.5 to 10.2.0.7:8080, changed by the options.
func conn(opts ...func(*authz.Connection)) *authz.Connection {
	c := &authz.Connection{
		Source:          web,
		SourceAddr:      netip.MustParseAddr("10.1.0.5"),
		DestinationAddr: netip.MustParseAddr("10.2.0.7"),
		DestinationPort: 8080,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

func from(id identity.Identity) func(*authz.Connection) {
	return func(c *authz.Connection) { c.Source = id }
}

func fromAddr(a string) func(*authz.Connection) {
	return func(c *authz.Connection) { c.SourceAddr = netip.MustParseAddr(a) }
}

func toAddr(a string) func(*authz.Connection) {
	return func(c *authz.Connection) { c.DestinationAddr = netip.MustParseAddr(a) }
}

func toPort(p uint16) func(*authz.Connection) {
	return func(c *authz.Connection) { c.DestinationPort = p }
}
