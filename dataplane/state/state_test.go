package state

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"go.uber.org/goleak"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func wl(ns, name, addr, node string, svcs ...*api.ServiceBinding) *api.Workload {
	return &api.Workload{Name: name, Namespace: ns, Addresses: [][]byte{ip(addr)}, Node: node, Services: svcs}
}

func bind(svc string, ports ...uint32) *api.ServiceBinding {
	b := &api.ServiceBinding{Service: svc}
	for i := 0; i+1 < len(ports); i += 2 {
		b.Ports = append(b.Ports, &api.PortMapping{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	return b
}

func TestApply(t *testing.T) {
	type check func(g Gomega, s *Snapshot)
	cases := []struct {
		name    string
		steps   []Delta
		wantErr string
		check   check
	}{
		{
			name:  "a workload is found by key, address and node, with its identity",
			steps: []Delta{{Upsert: Resources{Workloads: []*api.Workload{{Name: "a", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, Node: "n1", ServiceAccount: "sa"}}}}},
			check: func(g Gomega, s *Snapshot) {
				w := s.WorkloadByAddr(netip.MustParseAddr("10.0.0.1"))
				g.Expect(w).NotTo(BeNil())
				g.Expect(w.Key).To(Equal("ns/a"))
				g.Expect(w.Identity.String()).To(Equal("spiffe://cluster.local/ns/ns/sa/sa"))
				g.Expect(s.Workload("ns/a")).To(BeIdenticalTo(w))
				g.Expect(s.NodeWorkloads("n1")).To(ConsistOf(w))
				g.Expect(w.InMesh()).To(BeTrue())
				g.Expect(w.Healthy()).To(BeTrue())
			},
		},
		{
			name:  "an IPv4-mapped lookup finds the IPv4 workload",
			steps: []Delta{{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "a", "10.0.0.1", "n1")}}}},
			check: func(g Gomega, s *Snapshot) {
				g.Expect(s.WorkloadByAddr(netip.MustParseAddr("::ffff:10.0.0.1"))).NotTo(BeNil())
			},
		},
		{
			name: "the default service account and a workload's own trust domain",
			steps: []Delta{{Upsert: Resources{Workloads: []*api.Workload{
				{Name: "a", Namespace: "ns", Node: "n"}, {Name: "b", Namespace: "ns", Node: "n", TrustDomain: "other.org"},
			}}}},
			check: func(g Gomega, s *Snapshot) {
				g.Expect(s.Workload("ns/a").Identity.String()).To(Equal("spiffe://cluster.local/ns/ns/sa/default"))
				g.Expect(s.Workload("ns/b").Identity.TrustDomain).To(Equal("other.org"))
			},
		},
		{
			name: "endpoints of a service with target ports, relative and absolute references",
			steps: []Delta{{Upsert: Resources{
				Services: []*api.Service{{Name: "web", Namespace: "ns", Addresses: [][]byte{ip("10.96.0.1")}, Ports: []*api.ServicePort{{Port: 80, TargetPort: 8080}}}},
				Workloads: []*api.Workload{
					wl("ns", "w1", "10.0.0.1", "n1", bind("web", 80, 8080)),
					wl("other", "w2", "10.0.0.2", "n2", bind("ns/web", 80, 0)),
					wl("ns", "w3", "10.0.0.3", "n2", bind("web", 443, 8443)),
				},
			}}},
			check: func(g Gomega, s *Snapshot) {
				svc := s.ServiceByAddr(netip.MustParseAddr("10.96.0.1"))
				g.Expect(svc.Key).To(Equal("ns/web"))
				eps := s.Endpoints("ns/web", 80)
				g.Expect(eps).To(HaveLen(2))
				g.Expect(eps[0].Workload.Key).To(Equal("ns/w1"))
				g.Expect(eps[0].Port).To(BeEquivalentTo(8080))
				g.Expect(eps[1].Workload.Key).To(Equal("other/w2"))
				g.Expect(eps[1].Port).To(BeEquivalentTo(80), "target 0 means the service port")
				g.Expect(s.Endpoints("ns/web", 443)).To(HaveLen(1))
				g.Expect(s.Endpoints("ns/web", 9999)).To(BeEmpty())
				tp, ok := svc.HasPort(80)
				g.Expect(ok).To(BeTrue())
				g.Expect(tp).To(BeEquivalentTo(8080))
			},
		},
		{
			name: "unhealthy workloads are no endpoints",
			steps: []Delta{{Upsert: Resources{Workloads: []*api.Workload{
				{Name: "w1", Namespace: "ns", Addresses: [][]byte{ip("10.0.0.1")}, Status: api.WorkloadStatus_UNHEALTHY, Services: []*api.ServiceBinding{bind("web", 80, 0)}},
			}}}},
			check: func(g Gomega, s *Snapshot) { g.Expect(s.Endpoints("ns/web", 80)).To(BeEmpty()) },
		},
		{
			name: "an update moves a workload to a new address and node and drops its old service",
			steps: []Delta{
				{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "a", "10.0.0.1", "n1", bind("old", 80, 0))}}},
				{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "a", "10.0.0.9", "n2", bind("new", 80, 0))}}},
			},
			check: func(g Gomega, s *Snapshot) {
				g.Expect(s.WorkloadByAddr(netip.MustParseAddr("10.0.0.1"))).To(BeNil())
				g.Expect(s.WorkloadByAddr(netip.MustParseAddr("10.0.0.9"))).NotTo(BeNil())
				g.Expect(s.NodeWorkloads("n1")).To(BeEmpty())
				g.Expect(s.NodeWorkloads("n2")).To(HaveLen(1))
				g.Expect(s.Endpoints("ns/old", 80)).To(BeEmpty())
				g.Expect(s.Endpoints("ns/new", 80)).To(HaveLen(1))
			},
		},
		{
			name: "an address reused by a new pod belongs to the new pod after the old one is removed",
			steps: []Delta{
				{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "old", "10.0.0.1", "n1")}}},
				{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "new", "10.0.0.1", "n1")}}, RemoveWorkloads: []string{"ns/old"}},
			},
			check: func(g Gomega, s *Snapshot) {
				g.Expect(s.WorkloadByAddr(netip.MustParseAddr("10.0.0.1")).Key).To(Equal("ns/new"))
				g.Expect(s.NodeWorkloads("n1")).To(HaveLen(1))
			},
		},
		{
			name: "removal of workloads, services and policies",
			steps: []Delta{
				{Upsert: Resources{
					Workloads: []*api.Workload{wl("ns", "a", "10.0.0.1", "n1", bind("web", 80, 0))},
					Services:  []*api.Service{{Name: "web", Namespace: "ns", Addresses: [][]byte{ip("10.96.0.1")}}},
					Policies:  []*api.Authorization{{Name: "p", Namespace: "ns", Scope: api.Scope_NAMESPACE}},
				}},
				{RemoveWorkloads: []string{"ns/a"}, RemoveServices: []string{"ns/web"}, RemovePolicies: []string{"ns/p", "ns/unknown"}},
			},
			check: func(g Gomega, s *Snapshot) {
				w, svc, p := s.Counts()
				g.Expect([]int{w, svc, p}).To(Equal([]int{0, 0, 0}))
				g.Expect(s.ServiceByAddr(netip.MustParseAddr("10.96.0.1"))).To(BeNil())
				g.Expect(s.Endpoints("ns/web", 80)).To(BeEmpty())
			},
		},
		{
			name:    "a workload with a 5-byte address is refused, the rest applied",
			steps:   []Delta{{Upsert: Resources{Workloads: []*api.Workload{{Name: "bad", Namespace: "ns", Addresses: [][]byte{{1, 2, 3, 4, 5}}}, wl("ns", "good", "10.0.0.1", "n")}}}},
			wantErr: "Workload ns/bad: addresses[0]: 5 bytes",
			check: func(g Gomega, s *Snapshot) {
				g.Expect(s.Workload("ns/good")).NotTo(BeNil())
				g.Expect(s.Workload("ns/bad")).To(BeNil())
			},
		},
		{
			name:    "a workload without a namespace is refused",
			steps:   []Delta{{Upsert: Resources{Workloads: []*api.Workload{{Name: "x"}}}}},
			wantErr: "namespace is empty",
		},
		{
			name:    "a service port above 65535 is refused",
			steps:   []Delta{{Upsert: Resources{Services: []*api.Service{{Name: "s", Namespace: "ns", Ports: []*api.ServicePort{{Port: 70000}}}}}}},
			wantErr: "Service ns/s: ports[0]",
		},
		{
			name:    "a policy that does not compile is refused and the old version kept",
			steps:   []Delta{{Upsert: Resources{Policies: []*api.Authorization{{Name: "p", Namespace: "ns", Rules: []*api.Rule{{Clauses: []*api.Clause{{Matches: []*api.Match{{SourceIps: []*api.Cidr{{Address: ip("10.0.0.0"), Length: 33}}}}}}}}}}}}},
			wantErr: "Authorization ns/p",
			check: func(g Gomega, s *Snapshot) {
				_, _, p := s.Counts()
				g.Expect(p).To(Equal(0))
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			st := NewStore("cluster.local")
			var err error
			for _, d := range tc.steps {
				err = st.Apply(d)
			}
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
			}
			if tc.check != nil {
				tc.check(g, st.Load())
			}
		})
	}
}

func TestOldSnapshotsAreNotDisturbed(t *testing.T) {
	g := NewWithT(t)
	st := NewStore("cluster.local")
	g.Expect(st.Apply(Delta{Upsert: Resources{Workloads: []*api.Workload{wl("ns", "a", "10.0.0.1", "n1", bind("web", 80, 0))}}})).To(Succeed())
	old := st.Load()
	g.Expect(st.Apply(Delta{RemoveWorkloads: []string{"ns/a"}, Upsert: Resources{Workloads: []*api.Workload{wl("ns", "b", "10.0.0.2", "n1", bind("web", 80, 0))}}})).To(Succeed())
	g.Expect(old.Workload("ns/a")).NotTo(BeNil())
	g.Expect(old.Workload("ns/b")).To(BeNil())
	g.Expect(old.Endpoints("ns/web", 80)).To(HaveLen(1))
	g.Expect(old.Endpoints("ns/web", 80)[0].Workload.Key).To(Equal("ns/a"))
	g.Expect(st.Load().Version()).To(Equal(old.Version() + 1))
}

func TestSubscribeCoalesces(t *testing.T) {
	g := NewWithT(t)
	st := NewStore("cluster.local")
	ch := st.Subscribe()
	for i := range 5 {
		g.Expect(st.Apply(Delta{Upsert: Resources{Workloads: []*api.Workload{wl("ns", fmt.Sprint(i), "10.0.0.1", "n")}}})).To(Succeed())
	}
	g.Eventually(ch).Should(Receive())
	g.Consistently(ch, 50*time.Millisecond).ShouldNot(Receive())
	g.Expect(st.Apply(Delta{RemoveWorkloads: []string{"ns/absent"}})).To(Succeed())
	g.Consistently(ch, 50*time.Millisecond).ShouldNot(Receive(), "nothing changed, nothing is published")
}

func TestReplaceRemovesWhatIsGone(t *testing.T) {
	g := NewWithT(t)
	st := NewStore("cluster.local")
	g.Expect(st.Replace(Resources{
		Workloads: []*api.Workload{wl("ns", "a", "10.0.0.1", "n"), wl("ns", "b", "10.0.0.2", "n")},
		Services:  []*api.Service{{Name: "s", Namespace: "ns"}},
		Policies:  []*api.Authorization{{Name: "p", Namespace: "ns"}},
	})).To(Succeed())
	g.Expect(st.Replace(Resources{Workloads: []*api.Workload{wl("ns", "b", "10.0.0.2", "n")}})).To(Succeed())
	w, s, p := st.Load().Counts()
	g.Expect([]int{w, s, p}).To(Equal([]int{1, 0, 0}))
}

func TestPoliciesKeepCompiledIdentity(t *testing.T) {
	g := NewWithT(t)
	st := NewStore("cluster.local")
	g.Expect(st.Apply(Delta{Upsert: Resources{Policies: []*api.Authorization{{Name: "p1", Namespace: "ns"}, {Name: "p2", Namespace: "ns"}}}})).To(Succeed())
	p1 := st.Load().Policies().Get("ns/p1")
	g.Expect(st.Apply(Delta{Upsert: Resources{Policies: []*api.Authorization{{Name: "p2", Namespace: "ns", Action: api.Action_DENY}}}})).To(Succeed())
	g.Expect(st.Load().Policies().Get("ns/p1")).To(BeIdenticalTo(p1), "an unchanged policy keeps its compiled value")
	g.Expect(st.Load().Policies().Get("ns/p2").Action()).To(Equal(api.Action_DENY))
}

const sampleFile = `
trustDomain: example.org
workloads:
- name: client
  namespace: default
  addresses: ["127.0.1.5"]
  node: node-a
  serviceAccount: sleep
  canonicalName: sleep
- name: server
  namespace: default
  addresses: ["127.0.2.5", "fd00::5"]
  node: node-b
  services:
  - service: echo
    ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: waypoint
  status: HEALTHY
services:
- name: echo
  namespace: default
  addresses: ["10.96.0.10"]
  ports: [{port: 80, targetPort: 8080}]
policies:
- name: deny-legacy
  namespace: default
  scope: NAMESPACE
  action: DENY
  rules:
  - clauses:
    - matches:
      - sourceIps: ["10.1.0.0/16", "10.2.0.7"]
        destinationPorts: [22]
`

func TestParseFile(t *testing.T) {
	g := NewWithT(t)
	f, err := ParseFile([]byte(sampleFile))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.TrustDomain).To(Equal("example.org"))
	g.Expect(f.Workloads).To(HaveLen(2))
	g.Expect(f.Workloads[1].GetAddresses()).To(HaveLen(2))
	g.Expect(f.Workloads[1].GetAddresses()[1]).To(HaveLen(16))
	m := f.Policies[0].GetRules()[0].GetClauses()[0].GetMatches()[0]
	g.Expect(m.GetSourceIps()).To(HaveLen(2))
	g.Expect(m.GetSourceIps()[0].GetLength()).To(BeEquivalentTo(16))
	g.Expect(m.GetSourceIps()[1].GetLength()).To(BeEquivalentTo(32))

	st := NewStore(f.TrustDomain)
	g.Expect(st.Replace(f.Resources)).To(Succeed())
	s := st.Load()
	g.Expect(s.Workload("default/server").Waypoint).To(Equal("default/waypoint"))
	g.Expect(s.Endpoints("default/echo", 80)).To(HaveLen(1))
	dump := s.Dump()
	g.Expect(dump.Workloads[1]["addresses"]).To(Equal([]string{"127.0.2.5", "fd00::5"}))
}

func TestParseFileErrors(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"not YAML", "workloads: [", "parse"},
		{"unknown top-level key", "workload: []", `unknown top-level key "workload"`},
		{"bad address", "workloads:\n- name: a\n  namespace: b\n  addresses: [\"300.1.1.1\"]\n", "workloads[0]: addresses"},
		{"unknown field", "workloads:\n- name: a\n  colour: red\n", "workloads[0]"},
		{"bad CIDR", "policies:\n- name: p\n  namespace: n\n  rules: [{clauses: [{matches: [{sourceIps: [\"10.0.0.0/99\"]}]}]}]\n", "sourceIps"},
		{"bad enum", "policies:\n- name: p\n  namespace: n\n  action: MAYBE\n", "policies[0]"},
		{"trust domain not a string", "trustDomain: [a]", "trustDomain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFile([]byte(tc.in))
			NewWithT(t).Expect(err).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte(sampleFile))
	f.Add([]byte("workloads: [{name: a, namespace: b, addresses: ['::1']}]"))
	f.Add([]byte("policies: [{name: p, namespace: n, rules: [{clauses: [{matches: [{notSourceIps: ['1.2.3.4/8']}]}]}]}]"))
	f.Fuzz(func(_ *testing.T, data []byte) {
		file, err := ParseFile(data)
		if err != nil {
			return
		}
		// Whatever parses can be applied without a panic; invalid resources are refused, not fatal.
		st := NewStore("cluster.local")
		_ = st.Replace(file.Resources)
		_ = st.Load().Dump()
	})
}

func TestWatchFileReloadsAndKeepsLastGood(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	g.Expect(os.WriteFile(path, []byte(sampleFile), 0o600)).To(Succeed())
	st := NewStore("cluster.local")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 10)
	g.Expect(WatchFile(ctx, path, st, logr.Discard(), func(err error) { errs <- err })).To(Succeed())
	g.Expect(st.Load().Workload("default/client")).NotTo(BeNil())

	// A broken file is reported and changes nothing.
	g.Expect(os.WriteFile(path, []byte("workloads: ["), 0o600)).To(Succeed())
	g.Eventually(errs).WithTimeout(5 * time.Second).Should(Receive())
	g.Expect(st.Load().Workload("default/client")).NotTo(BeNil())

	// A fixed file is applied, also when it is replaced by a rename (as editors and ConfigMaps do).
	tmp := filepath.Join(dir, "tmp.yaml")
	g.Expect(os.WriteFile(tmp, []byte("workloads: [{name: only, namespace: ns, node: node-1}]"), 0o600)).To(Succeed())
	g.Expect(os.Rename(tmp, path)).To(Succeed())
	g.Eventually(func() *Workload { return st.Load().Workload("ns/only") }).WithTimeout(5 * time.Second).ShouldNot(BeNil())
	g.Expect(st.Load().Workload("default/client")).To(BeNil())
	cancel()
	// Let the watcher goroutine end before the leak check.
	time.Sleep(50 * time.Millisecond)
}

func BenchmarkApplyOnePodChange(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("mesh=%d", n), func(b *testing.B) {
			st := NewStore("cluster.local")
			ws := make([]*api.Workload, 0, n)
			for i := range n {
				a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				ws = append(ws, &api.Workload{Name: fmt.Sprintf("pod-%d", i), Namespace: fmt.Sprintf("ns-%d", i%100),
					Addresses: [][]byte{a.AsSlice()}, Node: fmt.Sprintf("node-%d", i%1000),
					Services: []*api.ServiceBinding{{Service: fmt.Sprintf("svc-%d", i%10_000), Ports: []*api.PortMapping{{ServicePort: 80}}}}})
			}
			if err := st.Apply(Delta{Upsert: Resources{Workloads: ws}}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				w := ws[i%n]
				w2 := &api.Workload{Name: w.Name, Namespace: w.Namespace, Addresses: w.Addresses, Node: w.Node, Services: w.Services,
					Status: api.WorkloadStatus(i % 2)}
				if err := st.Apply(Delta{Upsert: Resources{Workloads: []*api.Workload{w2}}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
