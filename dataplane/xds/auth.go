package xds

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/ambient-dev/ambient-operator/dataplane/xdsclient"
)

// NodeInfo is who a subscriber says it is (see xdsclient.NodeInfo); the server and its clients share it.
type NodeInfo = xdsclient.NodeInfo

// Roles of subscribers, the "role" key of node.metadata.
const (
	RoleNode     = xdsclient.RoleNode
	RoleWaypoint = xdsclient.RoleWaypoint
)

// waypointKey is the key of the waypoint's Service, as resources name it.
func waypointKey(n NodeInfo) string { return n.Namespace + "/" + n.Waypoint }

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
