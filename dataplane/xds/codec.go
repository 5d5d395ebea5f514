package xds

import (
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// Codec returns the gRPC codec of the server that serves xDS: it writes the Server's pre-encoded
// responses as they are and marshals every other message (requests, and other services on the same
// gRPC server, such as the CA) with the standard protobuf codec. Install it with
// grpc.ForceServerCodecV2(xds.Codec()) and set ServerOptions.PreEncoded: a response then costs a copy of
// bytes encoded once per resource, not a marshal of every resource for every subscriber.
func Codec() encoding.CodecV2 { return codec{std: encoding.GetCodecV2(proto.Name)} }

type codec struct{ std encoding.CodecV2 }

// encodedResponse is a DeltaDiscoveryResponse in its wire form.
type encodedResponse struct{ b []byte }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*encodedResponse); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	if c.std == nil {
		return nil, fmt.Errorf("xds codec: no protobuf codec registered")
	}
	return c.std.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if c.std == nil {
		return fmt.Errorf("xds codec: no protobuf codec registered")
	}
	return c.std.Unmarshal(data, v)
}

func (codec) Name() string { return proto.Name }

// Field numbers of envoy.service.discovery.v3.Resource, google.protobuf.Any and DeltaDiscoveryResponse.
const (
	fieldResourceVersion  = 1
	fieldResourceResource = 2
	fieldResourceName     = 3
	fieldAnyTypeURL       = 1
	fieldAnyValue         = 2
	fieldRespSystemVer    = 1
	fieldRespResources    = 2
	fieldRespTypeURL      = 4
	fieldRespNonce        = 5
	fieldRespRemoved      = 6
)

// encodeResource encodes a discovery Resource{name, version, Any{typeURL, value}} and returns it with the
// sub-slice that holds value.
func encodeResource(name, version, typeURL string, value []byte) (enc, val []byte) {
	anyLen := protowire.SizeTag(fieldAnyTypeURL) + protowire.SizeBytes(len(typeURL)) +
		protowire.SizeTag(fieldAnyValue) + protowire.SizeBytes(len(value))
	size := protowire.SizeTag(fieldResourceVersion) + protowire.SizeBytes(len(version)) +
		protowire.SizeTag(fieldResourceResource) + protowire.SizeBytes(anyLen) +
		protowire.SizeTag(fieldResourceName) + protowire.SizeBytes(len(name))
	b := make([]byte, 0, size)
	b = protowire.AppendTag(b, fieldResourceVersion, protowire.BytesType)
	b = protowire.AppendString(b, version)
	b = protowire.AppendTag(b, fieldResourceResource, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(anyLen)) // #nosec G115 -- a length, not negative
	b = protowire.AppendTag(b, fieldAnyTypeURL, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	b = protowire.AppendTag(b, fieldAnyValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(value))) // #nosec G115 -- a length, not negative
	start := len(b)
	b = append(b, value...)
	val = b[start:len(b):len(b)]
	b = protowire.AppendTag(b, fieldResourceName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	return b, val
}

// encodeResponse writes a DeltaDiscoveryResponse from pre-encoded resources.
func encodeResponse(typeURL, nonce, systemVersion string, upserts []*entry, removals []string) []byte {
	size := protowire.SizeTag(fieldRespTypeURL) + protowire.SizeBytes(len(typeURL)) +
		protowire.SizeTag(fieldRespNonce) + protowire.SizeBytes(len(nonce))
	if systemVersion != "" {
		size += protowire.SizeTag(fieldRespSystemVer) + protowire.SizeBytes(len(systemVersion))
	}
	for _, e := range upserts {
		size += protowire.SizeTag(fieldRespResources) + protowire.SizeBytes(len(e.enc))
	}
	for _, r := range removals {
		size += protowire.SizeTag(fieldRespRemoved) + protowire.SizeBytes(len(r))
	}
	b := make([]byte, 0, size)
	if systemVersion != "" {
		b = protowire.AppendTag(b, fieldRespSystemVer, protowire.BytesType)
		b = protowire.AppendString(b, systemVersion)
	}
	for _, e := range upserts {
		b = protowire.AppendTag(b, fieldRespResources, protowire.BytesType)
		b = protowire.AppendBytes(b, e.enc)
	}
	b = protowire.AppendTag(b, fieldRespTypeURL, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	b = protowire.AppendTag(b, fieldRespNonce, protowire.BytesType)
	b = protowire.AppendString(b, nonce)
	for _, r := range removals {
		b = protowire.AppendTag(b, fieldRespRemoved, protowire.BytesType)
		b = protowire.AppendString(b, r)
	}
	return b
}

// responseMessage builds the same response as a message, for a gRPC server without Codec.
func responseMessage(typeURL, nonce, systemVersion string, upserts []*entry, removals []string) *discoveryv3.DeltaDiscoveryResponse {
	resp := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: systemVersion, TypeUrl: typeURL, Nonce: nonce, RemovedResources: removals,
		Resources: make([]*discoveryv3.Resource, len(upserts)),
	}
	for i, e := range upserts {
		resp.Resources[i] = &discoveryv3.Resource{Name: e.name, Version: e.version, Resource: &anypb.Any{TypeUrl: typeURL, Value: e.value}}
	}
	return resp
}
