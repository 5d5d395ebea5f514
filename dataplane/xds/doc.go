// Package xds is the compact xDS control plane of the mesh.
//
// The server side translates Kubernetes objects (Pods, Services, EndpointSlices, Namespaces, ambient.dev
// Waypoints, waypoint Gateways and Istio AuthorizationPolicies), watched through shared informers, into the
// compact resources of dataplane/api/v1alpha1 (Workload, Service, Authorization), and serves them to node
// proxies and waypoints with delta ADS (envoy.service.discovery.v3.AggregatedDiscoveryService,
// DeltaAggregatedResources):
//
//   - Translator turns informer events into changes of single resources. A change of one pod recomputes
//     one Workload (and what depends on it), never the whole mesh; bursts are debounced.
//   - Server keeps each resource encoded once with a per-resource version (a hash of its encoding), an index
//     of which waypoint subscribers need which resource, and one bounded, coalescing queue per subscriber,
//     so that a slow subscriber never delays the others.
//   - TranslatePolicy is the L4 translation of an AuthorizationPolicy; whatever only a L7 proxy could
//     enforce never widens access.
//
// The client side, what node proxies and waypoints run, is package xdsclient: it dials the server over TLS
// 1.3, verifying its SPIFFE identity, subscribes to the three types, applies what it receives to a
// state.Store, ACKs or NACKs, and reconnects with backoff, resuming with the versions it holds.
package xds
