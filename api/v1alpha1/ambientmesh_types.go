package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// AmbientMeshName is the only name an AmbientMesh may have: the mesh is a cluster singleton.
const AmbientMeshName = "default"

// AmbientMeshSpec is the desired state of the mesh.
//
// +kubebuilder:validation:XValidation:rule="has(self.version) || has(self.image)",message="spec.version or spec.image must be set: the version picks the data-plane image unless spec.image overrides it",fieldPath=".version"
type AmbientMeshSpec struct {
	// version of the data plane to run (node proxy, xDS server, waypoints), for example "0.1.0".
	// Changing it starts a rolling upgrade: xDS server first, then the node proxies, then the waypoints.
	// The operator knows the image of every version it supports; spec.image overrides that choice.
	// +kubebuilder:validation:Pattern=`^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Version string `json:"version,omitempty"`

	// image is the data-plane image reference, overriding the image the version selects.
	// Use it for mirrors and private registries. When only the image changes, the components are rolled
	// in the same safe order as a version change.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	// +optional
	Image string `json:"image,omitempty"`

	// imagePullPolicy for every data-plane container.
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +kubebuilder:default=IfNotPresent
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// trustDomain is the SPIFFE trust domain of every workload identity in the mesh:
	// spiffe://<trustDomain>/ns/<namespace>/sa/<service-account>.
	// +kubebuilder:default="cluster.local"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`
	// +optional
	TrustDomain string `json:"trustDomain,omitempty"`

	// namespace the mesh components (xDS server, node proxies) run in. The operator creates it.
	// It cannot be changed after creation: delete and recreate the AmbientMesh to move the mesh.
	// +kubebuilder:default="ambient-system"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.namespace is immutable: delete and recreate the AmbientMesh to move the mesh"
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// nodeProxy configures the per-node HBONE proxy DaemonSet (the ztunnel role).
	// +kubebuilder:default={}
	// +optional
	NodeProxy NodeProxySpec `json:"nodeProxy,omitzero"`

	// xds configures the compact xDS server, which is also the mesh's certificate authority.
	// +kubebuilder:default={}
	// +optional
	XDS XDSSpec `json:"xds,omitzero"`

	// certificates configures the mesh certificate authority and workload certificates.
	// +kubebuilder:default={}
	// +optional
	Certificates CertificatesSpec `json:"certificates,omitzero"`

	// enrollment selects the namespaces and pods whose traffic the mesh captures.
	// +kubebuilder:default={}
	// +optional
	Enrollment EnrollmentSpec `json:"enrollment,omitzero"`

	// upgrade configures how version and image changes are rolled out.
	// +kubebuilder:default={}
	// +optional
	Upgrade UpgradeSpec `json:"upgrade,omitzero"`
}

// LogLevel is a data-plane log level.
// +kubebuilder:validation:Enum=error;warn;info;debug
type LogLevel string

// Log levels of the data plane.
const (
	LogLevelError LogLevel = "error"
	LogLevelWarn  LogLevel = "warn"
	LogLevelInfo  LogLevel = "info"
	LogLevelDebug LogLevel = "debug"
)

// NodeProxySpec configures the node proxy DaemonSet.
type NodeProxySpec struct {
	// resources of the node proxy container.
	// +kubebuilder:default={requests:{cpu:"100m",memory:"64Mi"},limits:{memory:"512Mi"}}
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitzero"`

	// nodeSelector restricts the node proxy to matching nodes. Pods on other nodes are not captured.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations of the node proxy. By default it tolerates every taint so that every node is covered.
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// priorityClassName of the node proxy pods. Defaults to system-node-critical.
	// +kubebuilder:default="system-node-critical"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// logLevel of the node proxy; it can also be changed at runtime through the admin endpoint.
	// +kubebuilder:default=info
	// +optional
	LogLevel LogLevel `json:"logLevel,omitempty"`

	// drainSeconds is how long a stopping node proxy lets open connections finish before closing them.
	// It becomes the pod's termination grace period (plus a few seconds).
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=3600
	// +optional
	DrainSeconds int32 `json:"drainSeconds,omitempty"`

	// cni says where the node's container runtime keeps its CNI plugins and network configuration. The
	// node proxy installs its chained CNI plugin there, which reports each pod's network namespace so that
	// the pod's traffic is captured inside it. The defaults fit most distributions; some keep them
	// elsewhere (for example /home/kubernetes/bin on GKE, /var/lib/cni/bin on OpenShift).
	// +kubebuilder:default={}
	// +optional
	CNI CNISpec `json:"cni,omitzero"`

	// updateStrategy says how node proxies are replaced during an upgrade.
	// +kubebuilder:default={type:RollingUpdate}
	// +optional
	UpdateStrategy NodeProxyUpdateStrategy `json:"updateStrategy,omitzero"`
}

// CNISpec locates the node's CNI directories.
type CNISpec struct {
	// binDir is the host directory of CNI plugin binaries.
	// +kubebuilder:default="/opt/cni/bin"
	// +kubebuilder:validation:Pattern=`^/[^\s]*$`
	// +kubebuilder:validation:MaxLength=256
	// +optional
	BinDir string `json:"binDir,omitempty"`
	// confDir is the host directory of CNI network configurations.
	// +kubebuilder:default="/etc/cni/net.d"
	// +kubebuilder:validation:Pattern=`^/[^\s]*$`
	// +kubebuilder:validation:MaxLength=256
	// +optional
	ConfDir string `json:"confDir,omitempty"`
}

// NodeProxyUpdateStrategyType names a node proxy update strategy.
// +kubebuilder:validation:Enum=RollingUpdate;NodeByNode
type NodeProxyUpdateStrategyType string

const (
	// RollingUpdateStrategy replaces node proxies with a DaemonSet rolling update. With the default
	// maxSurge 1 and maxUnavailable 0 a new proxy starts beside the old one on each node, and the old one
	// drains while the new one takes new connections on the same ports.
	RollingUpdateStrategy NodeProxyUpdateStrategyType = "RollingUpdate"
	// NodeByNodeStrategy replaces one node's proxy at a time: the operator moves to the next node only after
	// the new proxy on the previous node is ready and the old one has finished draining.
	NodeByNodeStrategy NodeProxyUpdateStrategyType = "NodeByNode"
)

// NodeProxyUpdateStrategy says how node proxies are replaced.
//
// +kubebuilder:validation:XValidation:rule="!has(self.rollingUpdate) || self.type == 'RollingUpdate'",message="spec.nodeProxy.updateStrategy.rollingUpdate may only be set when spec.nodeProxy.updateStrategy.type is RollingUpdate",fieldPath=".rollingUpdate"
type NodeProxyUpdateStrategy struct {
	// type of the strategy: RollingUpdate (DaemonSet surge rollout) or NodeByNode (one drained node at a time).
	// +kubebuilder:default=RollingUpdate
	// +optional
	Type NodeProxyUpdateStrategyType `json:"type,omitempty"`

	// rollingUpdate tunes the RollingUpdate strategy.
	// +optional
	RollingUpdate *NodeProxyRollingUpdate `json:"rollingUpdate,omitempty"`
}

// NodeProxyRollingUpdate tunes a DaemonSet rolling update of the node proxies.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.maxSurge) && has(self.maxUnavailable)) || !((self.maxSurge == 0 || self.maxSurge == '0%') && (self.maxUnavailable == 0 || self.maxUnavailable == '0%'))",message="spec.nodeProxy.updateStrategy.rollingUpdate: maxSurge and maxUnavailable cannot both be zero"
type NodeProxyRollingUpdate struct {
	// maxSurge is how many nodes (or what percentage) may run a new proxy beside the old one at once.
	// Default 1.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",message="spec.nodeProxy.updateStrategy.rollingUpdate.maxSurge must be a non-negative integer or a percentage like '10%'"
	// +optional
	MaxSurge *intstr.IntOrString `json:"maxSurge,omitempty"`

	// maxUnavailable is how many nodes (or what percentage) may be without a ready proxy during the
	// update. Default 0: keep every node covered.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')",message="spec.nodeProxy.updateStrategy.rollingUpdate.maxUnavailable must be a non-negative integer or a percentage like '10%'"
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// XDSSpec configures the compact xDS server and certificate authority.
type XDSSpec struct {
	// replicas of the xDS server.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// resources of the xDS server container.
	// +kubebuilder:default={requests:{cpu:"100m",memory:"128Mi"},limits:{memory:"1Gi"}}
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitzero"`

	// disruption configures the xDS server's PodDisruptionBudget.
	// +kubebuilder:default={}
	// +optional
	Disruption DisruptionSpec `json:"disruption,omitzero"`
}

// DisruptionSpec configures a PodDisruptionBudget. At most one of minAvailable and maxUnavailable may be set;
// with neither, maxUnavailable is 1.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.minAvailable) && has(self.maxUnavailable))",message="disruption.minAvailable and disruption.maxUnavailable are mutually exclusive: set one"
// +kubebuilder:validation:XValidation:rule="self.enabled || !(has(self.minAvailable) || has(self.maxUnavailable))",message="disruption.minAvailable and disruption.maxUnavailable require disruption.enabled to be true"
type DisruptionSpec struct {
	// enabled creates a PodDisruptionBudget.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// minAvailable pods during voluntary disruptions (number or percentage).
	// +kubebuilder:validation:XIntOrString
	// +optional
	MinAvailable *intstr.IntOrString `json:"minAvailable,omitempty"`

	// maxUnavailable pods during voluntary disruptions (number or percentage).
	// +kubebuilder:validation:XIntOrString
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// CertificatesSpec configures the mesh CA and workload certificates.
//
// +kubebuilder:validation:XValidation:rule="!has(self.rootSecretName) || !has(self.rootTTL)",message="spec.certificates.rootTTL applies only to a generated root: remove it or remove spec.certificates.rootSecretName",fieldPath=".rootTTL"
type CertificatesSpec struct {
	// workloadCertTTL is the lifetime of workload certificates. Proxies renew at half-life.
	// Between 10m and 720h (30 days).
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10m') && duration(self) <= duration('720h')",message="spec.certificates.workloadCertTTL must be between 10m and 720h"
	// +optional
	WorkloadCertTTL *metav1.Duration `json:"workloadCertTTL,omitempty"`

	// rootSecretName names a Secret in spec.namespace holding the CA root (keys tls.crt and tls.key, PEM).
	// When empty the operator generates a root once and never overwrites it.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +optional
	RootSecretName string `json:"rootSecretName,omitempty"`

	// rootTTL is the lifetime of a generated root certificate. Default 87600h (10 years).
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('24h')",message="spec.certificates.rootTTL must be at least 24h"
	// +optional
	RootTTL *metav1.Duration `json:"rootTTL,omitempty"`
}

// EnrollmentSpec selects the workloads whose traffic the mesh captures. A pod is enrolled when its
// namespace matches namespaceSelector or the pod matches podSelector, unless the pod carries
// ambient.dev/dataplane=disabled.
type EnrollmentSpec struct {
	// namespaceSelector selects enrolled namespaces. Default: the label ambient.dev/dataplane=enabled.
	// +kubebuilder:default={matchLabels:{"ambient.dev/dataplane":"enabled"}}
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="spec.enrollment.namespaceSelector.matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn'] ? (has(e.values) && size(e.values) > 0) : (!has(e.values) || size(e.values) == 0))",message="spec.enrollment.namespaceSelector.matchExpressions[].values must be non-empty for In and NotIn and empty for Exists and DoesNotExist"
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// podSelector selects individually enrolled pods in any namespace. Default: the label
	// ambient.dev/dataplane=enabled.
	// +kubebuilder:default={matchLabels:{"ambient.dev/dataplane":"enabled"}}
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="spec.enrollment.podSelector.matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn'] ? (has(e.values) && size(e.values) > 0) : (!has(e.values) || size(e.values) == 0))",message="spec.enrollment.podSelector.matchExpressions[].values must be non-empty for In and NotIn and empty for Exists and DoesNotExist"
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`

	// acceptIstioLabels also enrolls namespaces and pods labelled istio.io/dataplane-mode=ambient and honours
	// istio.io/use-waypoint, so workloads labelled for Istio ambient join without relabelling.
	// +kubebuilder:default=true
	// +optional
	AcceptIstioLabels *bool `json:"acceptIstioLabels,omitempty"`
}

// UpgradeSpec configures rollouts.
type UpgradeSpec struct {
	// progressDeadlineSeconds is how long one stage of a rollout (xDS server, node proxies, waypoints) may
	// go without progress before the mesh reports Degraded and the rollout stops there.
	// +kubebuilder:default=600
	// +kubebuilder:validation:Minimum=30
	// +kubebuilder:validation:Maximum=86400
	// +optional
	ProgressDeadlineSeconds int32 `json:"progressDeadlineSeconds,omitempty"`
}

// Condition types of an AmbientMesh.
const (
	// ConditionReady is true when every component runs the target version and is available.
	ConditionReady = "Ready"
	// ConditionProgressing is true while a rollout or the first installation is under way.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is true when something needs attention: a stalled rollout, invalid configuration,
	// unavailable components.
	ConditionDegraded = "Degraded"
	// ConditionReconciled is true when the last reconciliation applied the desired state without error.
	ConditionReconciled = "Reconciled"
)

// ComponentStatus is the observed state of one mesh component.
type ComponentStatus struct {
	// name of the component: xds, nodeProxy or waypoints.
	Name string `json:"name"`
	// currentVersion is the version every pod of the component runs, empty while versions are mixed.
	// +optional
	CurrentVersion string `json:"currentVersion,omitempty"`
	// targetVersion is the version the component is being moved to.
	// +optional
	TargetVersion string `json:"targetVersion,omitempty"`
	// desired number of pods (for nodeProxy: of nodes that should run a proxy).
	Desired int32 `json:"desired"`
	// updated pods, already running the target version.
	Updated int32 `json:"updated"`
	// ready pods.
	Ready int32 `json:"ready"`
	// available pods (ready for at least minReadySeconds).
	Available int32 `json:"available"`
}

// RolloutPhase names the stage a version rollout is in.
// +kubebuilder:validation:Enum=Installing;Idle;XDS;NodeProxy;Waypoints;Stalled
type RolloutPhase string

// Rollout phases.
const (
	RolloutInstalling RolloutPhase = "Installing"
	RolloutIdle       RolloutPhase = "Idle"
	RolloutXDS        RolloutPhase = "XDS"
	RolloutNodeProxy  RolloutPhase = "NodeProxy"
	RolloutWaypoints  RolloutPhase = "Waypoints"
	RolloutStalled    RolloutPhase = "Stalled"
)

// RolloutStatus is the state of the current (or last) version rollout.
type RolloutStatus struct {
	// phase of the rollout: Installing, XDS, NodeProxy, Waypoints, Stalled, or Idle when done.
	Phase RolloutPhase `json:"phase"`
	// stage is the stage the rollout is in, or stopped at when Stalled.
	// +optional
	Stage RolloutPhase `json:"stage,omitempty"`
	// fromVersion is the version the mesh ran before this rollout.
	// +optional
	FromVersion string `json:"fromVersion,omitempty"`
	// toVersion is the version being rolled out.
	// +optional
	ToVersion string `json:"toVersion,omitempty"`
	// targetImage is the image being rolled out.
	// +optional
	TargetImage string `json:"targetImage,omitempty"`
	// startTime of the rollout.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// lastProgressTime is when the current stage last made progress; the progress deadline runs from here.
	// +optional
	LastProgressTime *metav1.Time `json:"lastProgressTime,omitempty"`
	// completionTime of the rollout.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// message says what the rollout is waiting for.
	// +optional
	Message string `json:"message,omitempty"`
}

// AmbientMeshStatus is the observed state of the mesh.
type AmbientMeshStatus struct {
	// observedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Progressing, Degraded, Reconciled.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// version every component runs, once the mesh is fully on one version.
	// +optional
	Version string `json:"version,omitempty"`

	// nodes is "<ready>/<desired>" node proxies, for display.
	// +optional
	Nodes string `json:"nodes,omitempty"`

	// components: xds, nodeProxy, waypoints.
	// +listType=map
	// +listMapKey=name
	// +optional
	Components []ComponentStatus `json:"components,omitempty"`

	// rollout is the state of the current or last version rollout.
	// +optional
	Rollout *RolloutStatus `json:"rollout,omitempty"`

	// caSecretName is the Secret holding the CA root in use.
	// +optional
	CASecretName string `json:"caSecretName,omitempty"`
}

// AmbientMesh is the configuration of the ambient mesh: one per cluster, named "default". The operator
// turns it into the CA root, the xDS server, the node proxies, and upgrades them when the version changes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=am,categories=ambient
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.version`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.version`,priority=1
// +kubebuilder:printcolumn:name="Nodes",type=string,JSONPath=`.status.nodes`
// +kubebuilder:printcolumn:name="Rollout",type=string,JSONPath=`.status.rollout.phase`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="metadata.name must be 'default': AmbientMesh is a cluster singleton"
type AmbientMesh struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state of the mesh.
	// +required
	Spec AmbientMeshSpec `json:"spec"`
	// status is the observed state of the mesh.
	// +optional
	Status AmbientMeshStatus `json:"status,omitempty"`
}

// AmbientMeshList is a list of AmbientMesh.
//
// +kubebuilder:object:root=true
type AmbientMeshList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AmbientMesh `json:"items"`
}
