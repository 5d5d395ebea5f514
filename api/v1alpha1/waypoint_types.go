package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WaypointFor says which traffic a waypoint handles.
// +kubebuilder:validation:Enum=service;workload;all
type WaypointFor string

// Traffic a waypoint handles.
const (
	// WaypointForService handles traffic addressed to services (their VIPs) that use the waypoint.
	WaypointForService WaypointFor = "service"
	// WaypointForWorkload handles traffic addressed directly to pods that use the waypoint.
	WaypointForWorkload WaypointFor = "workload"
	// WaypointForAll handles both.
	WaypointForAll WaypointFor = "all"
)

// WaypointSpec is the desired state of a waypoint proxy.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.replicas) && has(self.autoscaling))",message="spec.replicas and spec.autoscaling are mutually exclusive: with autoscaling, set spec.autoscaling.minReplicas instead",fieldPath=".replicas"
type WaypointSpec struct {
	// for says which traffic the waypoint handles: "service" (traffic to services that use it, the default),
	// "workload" (traffic addressed to pods that use it) or "all".
	// +kubebuilder:default=service
	// +optional
	For WaypointFor `json:"for,omitempty"`

	// serviceAccount scopes the waypoint to the workloads running as this service account of the
	// waypoint's namespace. Empty: the waypoint serves its whole namespace.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +optional
	ServiceAccount string `json:"serviceAccount,omitempty"`

	// replicas of the waypoint Deployment when autoscaling is not used. Default 1.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// resources of the waypoint container.
	// +kubebuilder:default={requests:{cpu:"100m",memory:"64Mi"},limits:{memory:"512Mi"}}
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitzero"`

	// autoscaling adds a HorizontalPodAutoscaler on CPU.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`

	// disruption configures the waypoint's PodDisruptionBudget.
	// +kubebuilder:default={}
	// +optional
	Disruption DisruptionSpec `json:"disruption,omitzero"`

	// image overrides the data-plane image of this waypoint (normally the mesh's image).
	// An overridden waypoint is not moved by mesh upgrades.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	// +optional
	Image string `json:"image,omitempty"`
}

// AutoscalingSpec configures a HorizontalPodAutoscaler.
//
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",message="spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",fieldPath=".minReplicas"
type AutoscalingSpec struct {
	// minReplicas of the waypoint. Default 1.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	MinReplicas *int32 `json:"minReplicas,omitempty"`

	// maxReplicas of the waypoint.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxReplicas int32 `json:"maxReplicas"`

	// targetCPUUtilizationPercentage is the average CPU use the autoscaler aims for. Default 80.
	// +kubebuilder:default=80
	// +kubebuilder:validation:Minimum=10
	// +kubebuilder:validation:Maximum=100
	// +optional
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// WaypointAddressType is the kind of a waypoint address.
// +kubebuilder:validation:Enum=IPAddress;Hostname
type WaypointAddressType string

// Address kinds.
const (
	IPAddressType WaypointAddressType = "IPAddress"
	HostnameType  WaypointAddressType = "Hostname"
)

// WaypointAddress is an address that workloads' traffic is sent to.
type WaypointAddress struct {
	// type of the address.
	Type WaypointAddressType `json:"type"`
	// value of the address.
	Value string `json:"value"`
}

// Condition types of a Waypoint, in addition to Ready.
const (
	// ConditionAccepted is true when the waypoint's configuration is valid and it belongs to the mesh.
	ConditionAccepted = "Accepted"
	// ConditionProgrammed is true when at least one waypoint pod is ready to take traffic.
	ConditionProgrammed = "Programmed"
)

// WaypointStatus is the observed state of a waypoint.
type WaypointStatus struct {
	// observedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions: Accepted, Programmed, Ready.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// replicas of the waypoint Deployment.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// readyReplicas of the waypoint Deployment.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// version the waypoint pods run.
	// +optional
	Version string `json:"version,omitempty"`
	// addresses workloads' traffic is sent to; set once a waypoint pod is ready.
	// +listType=atomic
	// +optional
	Addresses []WaypointAddress `json:"addresses,omitempty"`
}

// Waypoint is a destination-side proxy for a namespace or one of its service accounts. Workloads use it
// when they, their Service or their Namespace carry the label ambient.dev/use-waypoint=<name>.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=wp,categories=ambient
// +kubebuilder:printcolumn:name="For",type=string,JSONPath=`.spec.for`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.status.addresses[0].value`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 52",message="metadata.name must be at most 52 characters: it names the waypoint's Deployment and Service"
type Waypoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state of the waypoint.
	// +kubebuilder:default={}
	// +optional
	Spec WaypointSpec `json:"spec,omitzero"`
	// status is the observed state of the waypoint.
	// +optional
	Status WaypointStatus `json:"status,omitempty"`
}

// WaypointList is a list of Waypoint.
//
// +kubebuilder:object:root=true
type WaypointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Waypoint `json:"items"`
}
