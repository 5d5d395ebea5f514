package xds

import (
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	. "github.com/onsi/gomega"
	"google.golang.org/protobuf/proto"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// TestEncodedResponse: the hand-written wire form decodes to the same message as the marshalled one.
func TestEncodedResponse(t *testing.T) {
	g := NewWithT(t)
	var entries []*entry
	for _, w := range []*api.Workload{workload("app", "a", 1), workload("app", "b", 2, func(w *api.Workload) { w.CanonicalName = "bee" })} {
		e, err := newEntry(wlChange(w, true))
		g.Expect(err).NotTo(HaveOccurred())
		entries = append(entries, e)
		res := &discoveryv3.Resource{}
		g.Expect(proto.Unmarshal(e.enc, res)).To(Succeed())
		g.Expect(res.GetName()).To(Equal("app/" + w.GetName()))
		g.Expect(res.GetVersion()).To(Equal(e.version))
		got := &api.Workload{}
		g.Expect(res.GetResource().UnmarshalTo(got)).To(Succeed())
		g.Expect(proto.Equal(got, w)).To(BeTrue())
	}
	for _, tc := range []struct {
		sys      string
		upserts  []*entry
		removals []string
	}{
		{"", entries, nil},
		{InitialSyncDone, entries[:1], []string{"app/gone", "app/gone2"}},
		{InitialSyncDone, nil, nil},
	} {
		raw := encodeResponse(api.WorkloadType, "42", tc.sys, tc.upserts, tc.removals)
		got := &discoveryv3.DeltaDiscoveryResponse{}
		g.Expect(proto.Unmarshal(raw, got)).To(Succeed())
		g.Expect(proto.Equal(got, responseMessage(api.WorkloadType, "42", tc.sys, tc.upserts, tc.removals))).To(BeTrue(), "%v", got)
	}
}
