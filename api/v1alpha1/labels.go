package v1alpha1

// Labels and names shared by the operator and the data plane. The data plane only needs the strings, so
// it may copy them; they are part of the product's user-facing contract and never change meaning.
const (
	// DataplaneLabel enrolls a namespace or pod in the mesh ("enabled") or keeps a pod out ("disabled").
	DataplaneLabel = "ambient.dev/dataplane"
	// DataplaneEnabled is the value of DataplaneLabel that enrolls.
	DataplaneEnabled = "enabled"
	// DataplaneDisabled is the value of DataplaneLabel that keeps a pod out of an enrolled namespace.
	DataplaneDisabled = "disabled"

	// IstioDataplaneModeLabel is Istio's enrollment label, accepted as an alias with the value "ambient".
	IstioDataplaneModeLabel = "istio.io/dataplane-mode"
	// IstioDataplaneModeAmbient is the value of IstioDataplaneModeLabel that enrolls.
	IstioDataplaneModeAmbient = "ambient"

	// UseWaypointLabel on a Namespace, Service or Pod names the Waypoint (in the same namespace) its traffic
	// goes through.
	UseWaypointLabel = "ambient.dev/use-waypoint"
	// IstioUseWaypointLabel is Istio's equivalent of UseWaypointLabel, accepted as an alias.
	IstioUseWaypointLabel = "istio.io/use-waypoint"

	// WaypointGatewayClass is the GatewayClass whose Gateways the operator runs as waypoints.
	WaypointGatewayClass = "ambient-waypoint"
	// WaypointControllerName is the controllerName of WaypointGatewayClass.
	WaypointControllerName = "ambient.dev/waypoint-controller"
	// HBONEProtocol is the listener protocol of a waypoint Gateway.
	HBONEProtocol = "HBONE"
	// HBONEPort is the port of HBONE tunnels.
	HBONEPort = 15008
)
