package apiv1alpha1_test

import (
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/proto"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// TestWorkloadEncodedSize prints and bounds the wire size of workloads: the design promises a typical pod
// in well under 150 bytes (Istio's equivalent is about 280 B).
func TestWorkloadEncodedSize(t *testing.T) {
	cases := []struct {
		name     string
		workload *api.Workload
		max      int
	}{
		{
			name: "minimal: a pod with an address on a node",
			workload: &api.Workload{
				Name: "sleep-7656cf8794-8fhdk", Namespace: "default",
				Addresses: [][]byte{ip("10.244.1.17")}, Node: "worker-1",
			},
			max: 60,
		},
		{
			name: "typical: one IP, one service port mapping, node, identity, app labels",
			workload: &api.Workload{
				Name: "reviews-v1-5f9d8c7b6-x7k2p", Namespace: "bookinfo",
				Addresses:      [][]byte{ip("10.244.12.37")},
				Node:           "ip-10-0-12-34.ec2.internal",
				ServiceAccount: "bookinfo-reviews",
				Services: []*api.ServiceBinding{{
					Service: "reviews",
					Ports:   []*api.PortMapping{{ServicePort: 9080}},
				}},
				CanonicalName: "reviews", CanonicalRevision: "v1",
			},
			max: 150,
		},
		{
			name: "rich: dual stack, two services with target ports, waypoint, policies, unhealthy",
			workload: &api.Workload{
				Name: "payments-api-6d5c9b7f4-q2w9z", Namespace: "payments",
				Addresses:      [][]byte{ip("10.244.12.38"), ip("fd00:10:244:12::38")},
				Node:           "ip-10-0-12-34.ec2.internal",
				ServiceAccount: "payments-api",
				Services: []*api.ServiceBinding{
					{Service: "payments", Ports: []*api.PortMapping{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}}},
					{Service: "shared/payments-internal", Ports: []*api.PortMapping{{ServicePort: 9090}}},
				},
				Status: api.WorkloadStatus_UNHEALTHY, Waypoint: "payments-waypoint",
				CanonicalName: "payments-api", CanonicalRevision: "2024-06-01",
				AuthorizationPolicies: []string{"allow-frontend", "deny-legacy"},
			},
			max: 300,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			b, err := proto.Marshal(tc.workload)
			g.Expect(err).NotTo(HaveOccurred())
			t.Logf("%-80s %3d bytes", tc.name, len(b))
			g.Expect(len(b)).To(BeNumerically("<=", tc.max))
		})
	}
}
