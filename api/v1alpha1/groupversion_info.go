// Package v1alpha1 holds the ambient.dev/v1alpha1 API: AmbientMesh, the mesh-wide configuration the
// operator turns into the CA, the xDS server and the node proxies, and Waypoint, a destination proxy for
// a namespace or a service account. It imports only the standard library and k8s.io/api(machinery), so
// that any client can use it.
//
// +kubebuilder:object:generate=true
// +groupName=ambient.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "ambient.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &AmbientMesh{}, &AmbientMeshList{}, &Waypoint{}, &WaypointList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
