// Package render builds the desired Kubernetes objects of the mesh with pure functions of the
// AmbientMesh and Waypoint specs, and applies them with server-side apply under one field owner, writing
// only when the live object differs from what is desired. The reconcilers in controllers/ambientmesh and
// controllers/waypoint decide what to render (which version each component gets during an upgrade); this
// package decides how it looks.
package render

import (
	"fmt"
	"strings"
)

// FieldOwner is the server-side apply field manager of every object the operator writes.
const FieldOwner = "ambient-operator"

// Names of the mesh components and their objects.
const (
	XDSName           = "ambient-xds"
	NodeName          = "ambient-node"
	CARootSecretName  = "ambient-ca-root"
	RootCertConfigMap = "ambient-root-cert"
	RootCertKey       = "root-cert.pem"
	// CATokenAudience is the audience of the service-account tokens proxies present to the CA.
	CATokenAudience = "ambient-ca"
	// MeshFinalizer guards the cleanup of the cluster-scoped objects of a mesh.
	MeshFinalizer = "ambient.dev/cleanup"
)

// Labels the operator sets.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelComponent = "app.kubernetes.io/component"
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelVersion   = "app.kubernetes.io/version"
	// LabelDataplaneVersion on a pod template says which data-plane version the pods run; the operator
	// reads it back from Deployments and DaemonSets to know each component's version during a rollout.
	LabelDataplaneVersion = "ambient.dev/version"
	// LabelWaypoint names the waypoint a pod belongs to.
	LabelWaypoint = "ambient.dev/waypoint"
	// LabelGatewayName is the Gateway API's label for the pods of a Gateway.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelImagePinned marks waypoint Deployments whose image the Waypoint overrides: mesh upgrades do not
	// move them, so the mesh does not wait for them.
	LabelImagePinned = "ambient.dev/image-pinned"
	// AnnotationImage on Deployments and DaemonSets records the data-plane image of the pod template.
	AnnotationImage = "ambient.dev/image"
	// AnnotationWaypointFor on a Gateway says which traffic the waypoint handles (as Waypoint spec.for).
	AnnotationWaypointFor = "ambient.dev/waypoint-for"
	// IstioLabelWaypointFor is Istio's label for the same, accepted as an alias.
	IstioLabelWaypointFor = "istio.io/waypoint-for"

	ManagedByValue = "ambient-operator"
	PartOfValue    = "ambient-mesh"
)

// Data-plane ports (DESIGN.md section 3).
const (
	PortOutbound         = 15001
	PortInboundPlaintext = 15006
	PortHBONE            = 15008
	PortXDS              = 15012
	PortAdmin            = 15000
	PortMetrics          = 15020
	PortReadiness        = 15021
	ReadinessPath        = "/healthz/ready"
)

// ProxyCommand is the proxies' binary in the data-plane image: the node proxy, its install-cni container
// and waypoints run it. It is ambient-dataplane without the xDS server, and without the Kubernetes client
// libraries only the server needs, so a proxy needs less than half the memory. The xDS server runs the
// image's entrypoint, ambient-dataplane.
const ProxyCommand = "/usr/local/bin/ambient-proxy"

// Mount paths inside data-plane pods.
const (
	TokenDir    = "/var/run/secrets/ambient"
	TokenPath   = TokenDir + "/token"
	RootCertDir = "/var/run/ambient/root"
	// CNIRunDir holds the node agent's Unix socket, shared with the CNI plugin on the host (HostCNIRunDir).
	CNIRunDir     = "/var/run/ambient/cni"
	HostCNIRunDir = "/var/run/ambient"
	// hostCNIBin and hostCNIConf are where install-cni sees the host's CNI directories.
	hostCNIBin  = "/host/opt/cni/bin"
	hostCNIConf = "/host/etc/cni/net.d"
)

// DefaultRegistry is where the operator finds data-plane images when a version is given without an image.
const DefaultRegistry = "ghcr.io/ambient-dev"

// XDSAddress is the address proxies reach the xDS server and CA at.
func XDSAddress(namespace string) string {
	return fmt.Sprintf("%s.%s.svc:%d", XDSName, namespace, PortXDS)
}

// XDSIdentity is the SPIFFE identity of the xDS server, which proxies verify.
func XDSIdentity(trustDomain, namespace string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, namespace, XDSName)
}

// NormalizeVersion drops a leading "v" so that "v0.1.0" and "0.1.0" are the same version.
func NormalizeVersion(v string) string { return strings.TrimPrefix(v, "v") }
