package xdsclient

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	api "github.com/ambient-dev/ambient-operator/dataplane/api/v1alpha1"
)

// Roles of subscribers, the "role" key of node.metadata.
const (
	RoleNode     = "node"
	RoleWaypoint = "waypoint"
)

// Keys of node.metadata (a Struct) by which subscribers identify themselves.
const (
	MetaRole      = "role"
	MetaNodeName  = "node_name"
	MetaNamespace = "namespace"
	MetaWaypoint  = "waypoint"
)

// NodeInfo is who a subscriber says it is, from node.metadata of its first request.
type NodeInfo struct {
	// Role is RoleNode or RoleWaypoint.
	Role string
	// NodeName is the node of a node proxy.
	NodeName string
	// Namespace and Waypoint name a waypoint (its Service, and the Waypoint or Gateway).
	Namespace string
	Waypoint  string
}

// Metadata returns the node.metadata Struct a client sends for this identity.
func (n NodeInfo) Metadata() *structpb.Struct {
	f := map[string]*structpb.Value{MetaRole: structpb.NewStringValue(n.Role)}
	if n.NodeName != "" {
		f[MetaNodeName] = structpb.NewStringValue(n.NodeName)
	}
	if n.Namespace != "" {
		f[MetaNamespace] = structpb.NewStringValue(n.Namespace)
	}
	if n.Waypoint != "" {
		f[MetaWaypoint] = structpb.NewStringValue(n.Waypoint)
	}
	return &structpb.Struct{Fields: f}
}

// String describes the subscriber for logs.
func (n NodeInfo) String() string {
	if n.Role == RoleWaypoint {
		return "waypoint " + n.Namespace + "/" + n.Waypoint
	}
	return "node " + n.NodeName
}

// ParseNode reads the subscriber's identity from node.metadata.
func ParseNode(node *corev3.Node) (NodeInfo, error) {
	md := node.GetMetadata().GetFields()
	str := func(k string) string { return md[k].GetStringValue() }
	n := NodeInfo{Role: str(MetaRole), NodeName: str(MetaNodeName), Namespace: str(MetaNamespace), Waypoint: str(MetaWaypoint)}
	switch n.Role {
	case RoleNode:
		if n.NodeName == "" {
			return n, fmt.Errorf("node.metadata: role %q needs %q", RoleNode, MetaNodeName)
		}
	case RoleWaypoint:
		if n.Namespace == "" || n.Waypoint == "" || strings.Contains(n.Namespace, "/") || strings.Contains(n.Waypoint, "/") {
			return n, fmt.Errorf("node.metadata: role %q needs %q and %q (names without '/')", RoleWaypoint, MetaNamespace, MetaWaypoint)
		}
	default:
		return n, fmt.Errorf("node.metadata: %q is %q; want %q or %q", MetaRole, n.Role, RoleNode, RoleWaypoint)
	}
	return n, nil
}

// InitialSyncDone is the system_version_info of the last response of a type's initial state on a stream:
// once a client has seen it for every type it subscribed to, it holds the server's full state. (The
// initial state of a type may be split over several responses; a client that already holds everything gets
// one empty response with the marker.)
const InitialSyncDone = "ambient.dev/initial-sync-done"

// TypeNames are the short names of the resource types (the type label of metrics), indexed by
// TypeWorkload, TypeService and TypeAuthorization.
var TypeNames = [NumTypes]string{"Workload", "Service", "Authorization"}

// TypeURLs are the type URLs, indexed like TypeNames.
var TypeURLs = [NumTypes]string{api.WorkloadType, api.ServiceType, api.AuthorizationType}

// Indexes of the resource types.
const (
	TypeWorkload = iota
	TypeService
	TypeAuthorization
	NumTypes
)

// TypeIndex returns the index of a type URL.
func TypeIndex(url string) (int, bool) {
	for i, u := range TypeURLs {
		if u == url {
			return i, true
		}
	}
	return 0, false
}
