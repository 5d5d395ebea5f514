package state

import (
	"net/netip"
	"slices"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Dump is the snapshot in a form for /config_dump: every resource in the protobuf JSON form, with
// addresses as text.
type Dump struct {
	Version     uint64           `json:"version"`
	TrustDomain string           `json:"trustDomain"`
	Workloads   []map[string]any `json:"workloads"`
	Services    []map[string]any `json:"services"`
	Policies    []map[string]any `json:"policies"`
}

// Dump returns the snapshot for display, sorted by key.
func (s *Snapshot) Dump() Dump {
	d := Dump{Version: s.version, TrustDomain: s.trustDomain}
	var wkeys []string
	s.workloads.All(func(k string, _ *Workload) bool { wkeys = append(wkeys, k); return true })
	slices.Sort(wkeys)
	for _, k := range wkeys {
		w := s.Workload(k)
		d.Workloads = append(d.Workloads, withAddrs(w.Proto, "addresses", w.Addresses))
	}
	var skeys []string
	s.services.All(func(k string, _ *Service) bool { skeys = append(skeys, k); return true })
	slices.Sort(skeys)
	for _, k := range skeys {
		v := s.Service(k)
		d.Services = append(d.Services, withAddrs(v.Proto, "addresses", v.Addresses))
	}
	pkeys := make([]string, 0, len(s.policyProtos))
	for k := range s.policyProtos {
		pkeys = append(pkeys, k)
	}
	slices.Sort(pkeys)
	for _, k := range pkeys {
		d.Policies = append(d.Policies, asMap(s.policyProtos[k]))
	}
	return d
}

func asMap(m proto.Message) map[string]any {
	out := map[string]any{}
	b, err := protojson.Marshal(m)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	if err := jsonUnmarshal(b, &out); err != nil {
		return map[string]any{"error": err.Error()}
	}
	return out
}

func withAddrs(m proto.Message, field string, addrs []netip.Addr) map[string]any {
	out := asMap(m)
	if len(addrs) > 0 {
		text := make([]string, len(addrs))
		for i, a := range addrs {
			text[i] = a.String()
		}
		out[field] = text
	}
	return out
}
