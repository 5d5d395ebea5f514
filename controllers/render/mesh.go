package render

import (
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
)

// MeshInputs is what the mesh reconciler decided, beyond the spec: which version each component runs
// right now (they differ during an upgrade) and which Secret holds the CA root.
type MeshInputs struct {
	XDS  Component
	Node Component
	// CASecretName is the Secret with the CA root: the user's spec.certificates.rootSecretName or the
	// generated one.
	CASecretName string
	// RootCertPEM is the public CA certificate, published to proxies in the ambient-root-cert ConfigMap.
	RootCertPEM string
}

// Mesh returns the namespaced and cluster-scoped objects of the mesh, without the Namespace and the
// generated CA Secret (those are created once, never re-applied). Every object is complete: applying
// it with server-side apply yields exactly the desired state. The error names the field of a spec the
// CRD could not fully validate.
func Mesh(mesh *ambientv1alpha1.AmbientMesh, in MeshInputs) ([]client.Object, error) {
	ns := mesh.Spec.Namespace
	xdsArgs, err := xdsArgs(mesh, in)
	if err != nil {
		return nil, err
	}
	objs := []client.Object{
		serviceAccount(XDSName, ns, componentLabels(XDSName, "xds", in.XDS.Version)),
		serviceAccount(NodeName, ns, componentLabels(NodeName, "node-proxy", in.Node.Version)),
		xdsClusterRole(),
		clusterRoleBinding(XDSName, XDSName, ns),
		xdsRole(ns, in.CASecretName),
		roleBinding(XDSName, ns, XDSName),
		rootCertConfigMap(ns, in.RootCertPEM, nil),
		xdsService(ns),
		xdsDeployment(mesh, in, xdsArgs),
		nodeDaemonSet(mesh, in),
	}
	if pdb := podDisruptionBudget(XDSName, ns, componentSelector(XDSName), mesh.Spec.XDS.Disruption, componentLabels(XDSName, "xds", in.XDS.Version)); pdb != nil {
		objs = append(objs, pdb)
	}
	return objs, nil
}

// GatewayClass is the class whose Gateways the operator runs as waypoints.
func GatewayClass() *gatewayv1.GatewayClass {
	desc := "Ambient mesh waypoints: one HBONE listener on port 15008"
	return &gatewayv1.GatewayClass{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "GatewayClass"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   ambientv1alpha1.WaypointGatewayClass,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		Spec: gatewayv1.GatewayClassSpec{
			ControllerName: ambientv1alpha1.WaypointControllerName,
			Description:    &desc,
		},
	}
}

// Namespace is the mesh's namespace, created by the operator when it does not exist.
func Namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue,
				// The node proxy needs host-level capabilities; the namespace must allow them.
				"pod-security.kubernetes.io/enforce": "privileged",
			},
		},
	}
}

// CASecret is the generated CA root Secret.
func CASecret(namespace string, certPEM, keyPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name: CARootSecretName, Namespace: namespace,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
}

func componentLabels(name, component, version string) map[string]string {
	l := map[string]string{
		LabelName: name, LabelComponent: component, LabelPartOf: PartOfValue, LabelManagedBy: ManagedByValue,
	}
	if version != "" {
		l[LabelVersion] = NormalizeVersion(version)
	}
	return l
}

func componentSelector(name string) map[string]string {
	return map[string]string{LabelName: name}
}

func serviceAccount(name, ns string, labels map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: withoutVersion(labels)},
		// Proxies present a projected token with the CA's audience, never the default token.
		AutomountServiceAccountToken: new(false),
	}
}

func withoutVersion(l map[string]string) map[string]string {
	out := make(map[string]string, len(l))
	for k, v := range l {
		if k != LabelVersion {
			out[k] = v
		}
	}
	return out
}

// xdsClusterRole is what the xDS server reads to build the mesh state, and TokenReview for the CA.
func xdsClusterRole() *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   XDSName,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "services", "namespaces", "nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"ambient.dev"}, Resources: []string{"waypoints"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"security.istio.io"}, Resources: []string{"authorizationpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"apiextensions.k8s.io"}, Resources: []string{"customresourcedefinitions"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		},
	}
}

func clusterRoleBinding(name, role, ns string) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
}

// xdsRole lets the xDS server read the CA root Secret, and only that Secret.
func xdsRole(ns, caSecret string) *rbacv1.Role {
	return &rbacv1.Role{
		TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{
			Name: XDSName, Namespace: ns,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{caSecret}, Verbs: []string{"get", "watch", "list"}},
		},
	}
}

func roleBinding(name, ns, sa string) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels: map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue},
		},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
	}
}

func rootCertConfigMap(ns, rootPEM string, extraLabels map[string]string) *corev1.ConfigMap {
	labels := map[string]string{LabelManagedBy: ManagedByValue, LabelPartOf: PartOfValue}
	for k, v := range extraLabels {
		labels[k] = v
	}
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: labels},
		Data:       map[string]string{RootCertKey: rootPEM},
	}
}

func xdsService(ns string) *corev1.Service {
	return &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name: XDSName, Namespace: ns,
			Labels: withoutVersion(componentLabels(XDSName, "xds", "")),
		},
		Spec: corev1.ServiceSpec{
			Selector: componentSelector(XDSName),
			Ports: []corev1.ServicePort{
				{Name: "grpc-xds", Port: PortXDS, TargetPort: intstr.FromInt32(PortXDS), Protocol: corev1.ProtocolTCP},
				{Name: "http-metrics", Port: PortMetrics, TargetPort: intstr.FromInt32(PortMetrics), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// xdsArgs are the flags of `ambient-dataplane xds`.
func xdsArgs(mesh *ambientv1alpha1.AmbientMesh, in MeshInputs) ([]string, error) {
	s := mesh.Spec
	args := []string{
		"xds",
		"--namespace=" + s.Namespace,
		"--trust-domain=" + s.TrustDomain,
		"--ca-secret=" + in.CASecretName,
		"--workload-cert-ttl=" + certTTL(mesh).Duration.String(),
		"--token-audience=" + CATokenAudience,
		"--grpc-port=" + strconv.Itoa(PortXDS),
		"--metrics-port=" + strconv.Itoa(PortMetrics),
		"--readiness-port=" + strconv.Itoa(PortReadiness),
		"--log-level=info",
		"--accept-istio-labels=" + strconv.FormatBool(s.Enrollment.AcceptIstioLabels == nil || *s.Enrollment.AcceptIstioLabels),
	}
	for _, sel := range []struct {
		flag, field string
		sel         *metav1.LabelSelector
	}{
		{"--enrollment-namespace-selector=", "spec.enrollment.namespaceSelector", s.Enrollment.NamespaceSelector},
		{"--enrollment-pod-selector=", "spec.enrollment.podSelector", s.Enrollment.PodSelector},
	} {
		if sel.sel == nil {
			continue
		}
		selector, err := metav1.LabelSelectorAsSelector(sel.sel)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sel.field, err)
		}
		args = append(args, sel.flag+selector.String())
	}
	return args, nil
}

func certTTL(mesh *ambientv1alpha1.AmbientMesh) metav1.Duration {
	if mesh.Spec.Certificates.WorkloadCertTTL != nil {
		return *mesh.Spec.Certificates.WorkloadCertTTL
	}
	return metav1.Duration{Duration: 24 * time.Hour}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func xdsDeployment(mesh *ambientv1alpha1.AmbientMesh, in MeshInputs, args []string) *appsv1.Deployment {
	s := mesh.Spec
	labels := componentLabels(XDSName, "xds", in.XDS.Version)
	podLabels := copyLabels(labels)
	podLabels[LabelDataplaneVersion] = NormalizeVersion(in.XDS.Version)
	replicas := orDefault(s.XDS.Replicas, 2)
	container := corev1.Container{
		Name:            "xds",
		Image:           in.XDS.Image,
		ImagePullPolicy: orDefault(s.ImagePullPolicy, corev1.PullIfNotPresent),
		Args:            args,
		Env:             downwardEnv(),
		Ports: []corev1.ContainerPort{
			{Name: "grpc-xds", ContainerPort: PortXDS, Protocol: corev1.ProtocolTCP},
			{Name: "http-metrics", ContainerPort: PortMetrics, Protocol: corev1.ProtocolTCP},
			{Name: "http-ready", ContainerPort: PortReadiness, Protocol: corev1.ProtocolTCP},
		},
		Resources:       s.XDS.Resources,
		ReadinessProbe:  readinessProbe(),
		LivenessProbe:   livenessProbe(),
		SecurityContext: restrictedSecurityContext(),
	}
	return &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name: XDSName, Namespace: s.Namespace, Labels: labels,
			Annotations: map[string]string{AnnotationImage: in.XDS.Image},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: componentSelector(XDSName)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge: new(intstr.FromInt32(1)), MaxUnavailable: new(intstr.FromInt32(0)),
				},
			},
			ProgressDeadlineSeconds: new(orDefault(s.Upgrade.ProgressDeadlineSeconds, 600)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: scrapeAnnotations()},
				Spec: corev1.PodSpec{
					ServiceAccountName:           XDSName,
					AutomountServiceAccountToken: new(true),
					SecurityContext:              restrictedPodSecurityContext(),
					Containers:                   []corev1.Container{container},
					Affinity:                     spreadAcrossNodes(componentSelector(XDSName)),
				},
			},
		},
	}
}

// nodeArgs are the flags of `ambient-proxy node`.
func nodeArgs(mesh *ambientv1alpha1.AmbientMesh) []string {
	s := mesh.Spec
	return append([]string{
		"node",
		"--node-name=$(NODE_NAME)",
		"--cni-socket=" + CNIRunDir + "/cni.sock",
	}, proxyArgs(s.TrustDomain, s.Namespace, string(orDefault(s.NodeProxy.LogLevel, ambientv1alpha1.LogLevelInfo)),
		orDefault(s.NodeProxy.DrainSeconds, 30))...)
}

// proxyArgs are the flags node proxies and waypoints share: how to reach the xDS server and CA, and who
// they are.
func proxyArgs(trustDomain, meshNamespace, logLevel string, drainSeconds int32) []string {
	return []string{
		"--xds-address=" + XDSAddress(meshNamespace),
		"--xds-identity=" + XDSIdentity(trustDomain, meshNamespace),
		"--root-cert=" + RootCertDir + "/" + RootCertKey,
		"--token=" + TokenPath,
		"--trust-domain=" + trustDomain,
		"--log-level=" + logLevel,
		"--drain-seconds=" + strconv.Itoa(int(drainSeconds)),
	}
}

func nodeDaemonSet(mesh *ambientv1alpha1.AmbientMesh, in MeshInputs) *appsv1.DaemonSet {
	s := mesh.Spec
	np := s.NodeProxy
	labels := componentLabels(NodeName, "node-proxy", in.Node.Version)
	podLabels := copyLabels(labels)
	podLabels[LabelDataplaneVersion] = NormalizeVersion(in.Node.Version)
	drain := orDefault(np.DrainSeconds, 30)
	tolerations := np.Tolerations
	if len(tolerations) == 0 {
		// A node without a proxy is a node whose pods lose the mesh: tolerate every taint by default.
		tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	}
	container := corev1.Container{
		Name:            "node-proxy",
		Image:           in.Node.Image,
		ImagePullPolicy: orDefault(s.ImagePullPolicy, corev1.PullIfNotPresent),
		Command:         []string{ProxyCommand},
		Args:            nodeArgs(mesh),
		Env:             downwardEnv(),
		Ports: []corev1.ContainerPort{
			{Name: "http-metrics", ContainerPort: PortMetrics, Protocol: corev1.ProtocolTCP},
			{Name: "http-ready", ContainerPort: PortReadiness, Protocol: corev1.ProtocolTCP},
		},
		Resources:      np.Resources,
		ReadinessProbe: readinessProbe(),
		LivenessProbe:  livenessProbe(),
		SecurityContext: &corev1.SecurityContext{
			// Redirection enters pod network namespaces (SYS_ADMIN for setns), installs their iptables
			// rules (NET_ADMIN) and opens transparent sockets (NET_RAW); nothing else.
			RunAsUser:                new(int64(0)),
			RunAsNonRoot:             new(false),
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			Privileged:               new(false),
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_ADMIN", "SYS_ADMIN", "NET_RAW"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
		},
		VolumeMounts: append(proxyVolumeMounts(),
			corev1.VolumeMount{Name: "cni-run", MountPath: CNIRunDir},
			corev1.VolumeMount{Name: "netns", MountPath: "/var/run/netns", MountPropagation: new(corev1.MountPropagationHostToContainer)},
		),
	}
	installCNI := corev1.Container{
		Name:            "install-cni",
		Image:           in.Node.Image,
		ImagePullPolicy: orDefault(s.ImagePullPolicy, corev1.PullIfNotPresent),
		Command:         []string{ProxyCommand},
		Args: []string{
			"cni", "install",
			"--bin-dir=" + hostCNIBin, "--conf-dir=" + hostCNIConf,
			"--agent-socket=" + HostCNIRunDir + "/cni.sock", "--log-file=" + HostCNIRunDir + "/cni.log",
		},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi"),
		}},
		SecurityContext: &corev1.SecurityContext{
			// Writes the host's CNI directories, which root owns; no capability beyond that.
			RunAsUser:                new(int64(0)),
			RunAsNonRoot:             new(false),
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"DAC_OVERRIDE", "CHOWN", "FOWNER"}},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "cni-bin", MountPath: hostCNIBin},
			{Name: "cni-conf", MountPath: hostCNIConf},
		},
	}
	return &appsv1.DaemonSet{
		TypeMeta: metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{
			Name: NodeName, Namespace: s.Namespace, Labels: labels,
			Annotations: map[string]string{AnnotationImage: in.Node.Image},
		},
		Spec: appsv1.DaemonSetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: componentSelector(NodeName)},
			UpdateStrategy: daemonSetStrategy(np.UpdateStrategy),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: scrapeAnnotations()},
				Spec: corev1.PodSpec{
					ServiceAccountName:            NodeName,
					AutomountServiceAccountToken:  new(false),
					PriorityClassName:             np.PriorityClassName,
					NodeSelector:                  np.NodeSelector,
					Tolerations:                   tolerations,
					TerminationGracePeriodSeconds: new(int64(drain) + 5),
					// install-cni runs beside the proxy: it keeps the plugin installed (network plugins
					// rewrite their configuration) and removes it when the DaemonSet goes away.
					Containers: []corev1.Container{container, installCNI},
					Volumes: append(proxyVolumes(),
						corev1.Volume{Name: "cni-run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: HostCNIRunDir, Type: new(corev1.HostPathDirectoryOrCreate)}}},
						corev1.Volume{Name: "netns", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: "/var/run/netns", Type: new(corev1.HostPathDirectoryOrCreate)}}},
						corev1.Volume{Name: "cni-bin", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: orDefault(np.CNI.BinDir, "/opt/cni/bin"), Type: new(corev1.HostPathDirectoryOrCreate)}}},
						corev1.Volume{Name: "cni-conf", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: orDefault(np.CNI.ConfDir, "/etc/cni/net.d"), Type: new(corev1.HostPathDirectoryOrCreate)}}},
					),
				},
			},
		},
	}
}

// daemonSetStrategy maps the mesh's node proxy update strategy to the DaemonSet's. NodeByNode uses
// OnDelete: the operator itself replaces one node's proxy at a time.
func daemonSetStrategy(s ambientv1alpha1.NodeProxyUpdateStrategy) appsv1.DaemonSetUpdateStrategy {
	if s.Type == ambientv1alpha1.NodeByNodeStrategy {
		return appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
	}
	surge, unavailable := intstr.FromInt32(1), intstr.FromInt32(0)
	if ru := s.RollingUpdate; ru != nil {
		if ru.MaxSurge != nil {
			surge = *ru.MaxSurge
		}
		if ru.MaxUnavailable != nil {
			unavailable = *ru.MaxUnavailable
		}
	}
	return appsv1.DaemonSetUpdateStrategy{
		Type:          appsv1.RollingUpdateDaemonSetStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: &surge, MaxUnavailable: &unavailable},
	}
}

func podDisruptionBudget(name, ns string, selector map[string]string, d ambientv1alpha1.DisruptionSpec, labels map[string]string) *policyv1.PodDisruptionBudget {
	if d.Enabled != nil && !*d.Enabled {
		return nil
	}
	spec := policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: selector}}
	switch {
	case d.MinAvailable != nil:
		spec.MinAvailable = d.MinAvailable
	case d.MaxUnavailable != nil:
		spec.MaxUnavailable = d.MaxUnavailable
	default:
		spec.MaxUnavailable = new(intstr.FromInt32(1))
	}
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: policyv1.SchemeGroupVersion.String(), Kind: "PodDisruptionBudget"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: withoutVersion(labels)},
		Spec:       spec,
	}
}

func downwardEnv() []corev1.EnvVar {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	return []corev1.EnvVar{
		field("NODE_NAME", "spec.nodeName"),
		field("POD_NAME", "metadata.name"),
		field("POD_NAMESPACE", "metadata.namespace"),
		field("POD_IP", "status.podIP"),
		field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
	}
}

func readinessProbe() *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: ReadinessPath, Port: intstr.FromInt32(PortReadiness), Scheme: corev1.URISchemeHTTP,
		}},
		PeriodSeconds: 5, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3,
	}
}

func livenessProbe() *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/healthz/live", Port: intstr.FromInt32(PortReadiness), Scheme: corev1.URISchemeHTTP,
		}},
		InitialDelaySeconds: 10, PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 6,
	}
}

func restrictedPodSecurityContext() *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot:   new(true),
		RunAsUser:      new(int64(65532)),
		RunAsGroup:     new(int64(65532)),
		FSGroup:        new(int64(65532)),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func restrictedSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: new(false),
		ReadOnlyRootFilesystem:   new(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

// proxyVolumes hold the projected CA token and the mesh root certificate every proxy needs.
func proxyVolumes() []corev1.Volume {
	return []corev1.Volume{
		{Name: "ca-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: CATokenAudience, ExpirationSeconds: new(int64(43200)), Path: "token",
			}}},
		}}},
		{Name: "root-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: RootCertConfigMap},
		}}},
	}
}

func proxyVolumeMounts() []corev1.VolumeMount {
	return []corev1.VolumeMount{
		{Name: "ca-token", MountPath: TokenDir, ReadOnly: true},
		{Name: "root-cert", MountPath: RootCertDir, ReadOnly: true},
	}
}

func scrapeAnnotations() map[string]string {
	return map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   strconv.Itoa(PortMetrics),
		"prometheus.io/path":   "/metrics",
	}
}

func spreadAcrossNodes(selector map[string]string) *corev1.Affinity {
	return &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
			Weight: 100,
			PodAffinityTerm: corev1.PodAffinityTerm{
				LabelSelector: &metav1.LabelSelector{MatchLabels: selector},
				TopologyKey:   corev1.LabelHostname,
			},
		}},
	}}
}

func copyLabels(l map[string]string) map[string]string {
	out := make(map[string]string, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	return out
}
