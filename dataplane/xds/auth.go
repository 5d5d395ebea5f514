package xds

import (
	"context"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
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

// DefaultNodeServiceAccount is the node proxies' service account in the mesh namespace.
const DefaultNodeServiceAccount = "ambient-node"

// Caller is an authenticated subscriber: the service account its token belongs to.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// NodeName is the node of the pod the token is bound to, when the authenticator knows it; a node
	// proxy must then subscribe for that node.
	NodeName string
}

// Authenticator verifies the bearer token of a subscriber (gRPC metadata "authorization: Bearer <token>").
// The xDS command uses the CA's TokenReview-based authenticator.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

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

// waypointKey is the key of the waypoint's Service, as resources name it.
func (n NodeInfo) waypointKey() string { return n.Namespace + "/" + n.Waypoint }

// parseNode reads the subscriber's identity from node.metadata.
func parseNode(node *corev3.Node) (NodeInfo, error) {
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

// authorize checks that the caller may subscribe as n: a node proxy is the node service account of the
// mesh namespace (on that node, when the token says which); a waypoint is its own service account (named
// like the waypoint) in its namespace.
func authorize(n NodeInfo, c Caller, meshNamespace, nodeAccount string) error {
	switch n.Role {
	case RoleNode:
		if c.Namespace != meshNamespace || c.ServiceAccount != nodeAccount {
			return fmt.Errorf("%s/%s may not subscribe as a node proxy: only %s/%s may", c.Namespace, c.ServiceAccount, meshNamespace, nodeAccount)
		}
		if c.NodeName != "" && c.NodeName != n.NodeName {
			return fmt.Errorf("the token is bound to a pod on node %q, not %q", c.NodeName, n.NodeName)
		}
	case RoleWaypoint:
		if c.Namespace != n.Namespace || c.ServiceAccount != n.Waypoint {
			return fmt.Errorf("%s/%s may not subscribe as waypoint %s/%s: only its service account %s/%s may",
				c.Namespace, c.ServiceAccount, n.Namespace, n.Waypoint, n.Namespace, n.Waypoint)
		}
	}
	return nil
}

// bearerToken returns the token of "authorization: Bearer <token>", or "".
func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}
