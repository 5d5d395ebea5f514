// Package apiv1alpha1 is the generated Go code of the compact xDS API (workload.proto,
// authorization.proto, ca.proto) and the type URLs under which delta ADS carries its resources.
package apiv1alpha1

// Type URLs of the compact resources in delta ADS.
const (
	WorkloadType      = "type.googleapis.com/ambient.dev.v1alpha1.Workload"
	ServiceType       = "type.googleapis.com/ambient.dev.v1alpha1.Service"
	AuthorizationType = "type.googleapis.com/ambient.dev.v1alpha1.Authorization"
)
