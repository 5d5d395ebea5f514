package state

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// File is the static configuration file of a proxy without a control plane (docs/config-file.md): the
// same resources the xDS server sends, in the protobuf JSON field names, with addresses written as text
// ("10.0.0.7", "fd00::7") and CIDRs as "10.0.0.0/8".
type File struct {
	// TrustDomain of the mesh; the proxy's --trust-domain flag wins when both are set.
	TrustDomain string
	Resources
}

// LoadFile reads and parses a configuration file.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the operator of the proxy names the file
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	f, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return f, nil
}

// ParseFile parses the content of a configuration file (YAML or JSON).
func ParseFile(data []byte) (*File, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	f := &File{}
	for k := range doc {
		switch k {
		case "trustDomain", "workloads", "services", "policies":
		default:
			return nil, fmt.Errorf("unknown top-level key %q (want trustDomain, workloads, services, policies)", k)
		}
	}
	if td, ok := doc["trustDomain"]; ok {
		s, ok := td.(string)
		if !ok {
			return nil, fmt.Errorf("trustDomain: want a string")
		}
		f.TrustDomain = s
	}
	for i, item := range list(doc["workloads"]) {
		w := &api.Workload{}
		if err := decode(item, w, "workloads", i, addressFields); err != nil {
			return nil, err
		}
		f.Workloads = append(f.Workloads, w)
	}
	for i, item := range list(doc["services"]) {
		s := &api.Service{}
		if err := decode(item, s, "services", i, addressFields); err != nil {
			return nil, err
		}
		f.Services = append(f.Services, s)
	}
	for i, item := range list(doc["policies"]) {
		p := &api.Authorization{}
		if err := decode(item, p, "policies", i, cidrFields); err != nil {
			return nil, err
		}
		f.Policies = append(f.Policies, p)
	}
	return f, nil
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

var (
	addressFields = func(path []string, v any) (any, error) {
		if len(path) > 0 && path[len(path)-1] == "addresses" {
			return textAddrs(v)
		}
		return v, nil
	}
	cidrFields = func(path []string, v any) (any, error) {
		switch path[len(path)-1] {
		case "sourceIps", "notSourceIps", "destinationIps", "notDestinationIps",
			"source_ips", "not_source_ips", "destination_ips", "not_destination_ips":
			return textCIDRs(v)
		}
		return v, nil
	}
)

// decode converts one item to protobuf JSON (text addresses to base64 bytes) and unmarshals it strictly.
func decode(item any, into proto.Message, kind string, i int, convert func([]string, any) (any, error)) error {
	converted, err := walk(nil, item, convert)
	if err != nil {
		return fmt.Errorf("%s[%d]: %w", kind, i, err)
	}
	data, err := json.Marshal(converted)
	if err != nil {
		return fmt.Errorf("%s[%d]: %w", kind, i, err)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s[%d]: %w", kind, i, err)
	}
	return nil
}

// walk rewrites the values of a decoded document whose key path convert recognizes.
func walk(path []string, v any, convert func([]string, any) (any, error)) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := append(append([]string(nil), path...), k)
			c, err := convert(p, t[k])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", strings.Join(p, "."), err)
			}
			if c, err = walk(p, c, convert); err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			c, err := walk(path, e, convert)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	}
	return v, nil
}

func textAddrs(v any) (any, error) {
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a list of addresses")
	}
	out := make([]any, len(l))
	for i, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("[%d]: want an address string", i)
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out[i] = base64.StdEncoding.EncodeToString(a.Unmap().AsSlice())
	}
	return out, nil
}

func textCIDRs(v any) (any, error) {
	l, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a list of CIDRs")
	}
	out := make([]any, len(l))
	for i, e := range l {
		s, ok := e.(string)
		if !ok {
			// Already in protobuf form ({address, length}).
			out[i] = e
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out[i] = map[string]any{"address": base64.StdEncoding.EncodeToString(p.Addr().AsSlice()), "length": p.Bits()}
	}
	return out, nil
}

// parsePrefix accepts "10.0.0.0/8" and a bare address as its host prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-(p.Addr().BitLen()-p.Addr().Unmap().BitLen())), nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
