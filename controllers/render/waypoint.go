package render

import (
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
)

// WaypointInputs describe one waypoint, whether it was declared as a Waypoint or as a Gateway of the
// ambient-waypoint class.
type WaypointInputs struct {
	Name      string
	Namespace string
	Spec      ambientv1alpha1.WaypointSpec
	// Component is the version and image the waypoint runs now.
	Component Component
	// Mesh supplies the trust domain, the mesh namespace, the pull policy and the drain time.
	Mesh *ambientv1alpha1.AmbientMesh
	// ExtraPodLabels are added to the pods, e.g. the Gateway API's gateway-name label.
	ExtraPodLabels map[string]string
}

// WaypointLabels are the labels of every object of a waypoint.
func WaypointLabels(name, version string) map[string]string {
	l := componentLabels(name, "waypoint", version)
	l[LabelWaypoint] = name
	return l
}

// WaypointSelector selects a waypoint's pods.
func WaypointSelector(name string) map[string]string {
	return map[string]string{LabelWaypoint: name}
}

// Waypoint returns the objects of a waypoint: ServiceAccount, Deployment, Service, and, when asked for,
// PodDisruptionBudget and HorizontalPodAutoscaler.
func Waypoint(in WaypointInputs) []client.Object {
	labels := WaypointLabels(in.Name, in.Component.Version)
	dep := waypointDeployment(in, labels)
	if in.Spec.Image != "" {
		dep.Labels[LabelImagePinned] = "true"
	}
	objs := []client.Object{
		serviceAccount(in.Name, in.Namespace, labels),
		dep,
		waypointService(in, labels),
	}
	if pdb := podDisruptionBudget(in.Name, in.Namespace, WaypointSelector(in.Name), in.Spec.Disruption, labels); pdb != nil {
		objs = append(objs, pdb)
	}
	if hpa := waypointHPA(in, labels); hpa != nil {
		objs = append(objs, hpa)
	}
	return objs
}

// RootCert is the mesh root certificate ConfigMap published in a namespace where proxies run. It belongs to
// the mesh, not to any one waypoint, because every waypoint of the namespace mounts it.
func RootCert(namespace, rootPEM string) *corev1.ConfigMap {
	return rootCertConfigMap(namespace, rootPEM, nil)
}

func waypointArgs(in WaypointInputs) []string {
	m := in.Mesh.Spec
	args := []string{
		"waypoint",
		"--waypoint=" + in.Name,
		"--namespace=$(POD_NAMESPACE)",
		"--for=" + string(orDefault(in.Spec.For, ambientv1alpha1.WaypointForService)),
	}
	if in.Spec.ServiceAccount != "" {
		args = append(args, "--scope-service-account="+in.Spec.ServiceAccount)
	}
	return append(args, proxyArgs(m.TrustDomain, m.Namespace, string(orDefault(m.NodeProxy.LogLevel, ambientv1alpha1.LogLevelInfo)),
		orDefault(m.NodeProxy.DrainSeconds, 30))...)
}

func waypointDeployment(in WaypointInputs, labels map[string]string) *appsv1.Deployment {
	podLabels := copyLabels(labels)
	podLabels[LabelDataplaneVersion] = NormalizeVersion(in.Component.Version)
	// A waypoint terminates HBONE itself: its own pods are never captured by a node proxy.
	podLabels[ambientv1alpha1.DataplaneLabel] = ambientv1alpha1.DataplaneDisabled
	for k, v := range in.ExtraPodLabels {
		podLabels[k] = v
	}
	var replicas *int32
	switch {
	case in.Spec.Autoscaling != nil:
		// The HorizontalPodAutoscaler owns the replica count.
	case in.Spec.Replicas != nil:
		replicas = in.Spec.Replicas
	default:
		replicas = new(int32(1))
	}
	drain := orDefault(in.Mesh.Spec.NodeProxy.DrainSeconds, 30)
	container := corev1.Container{
		Name:            "waypoint",
		Image:           in.Component.Image,
		ImagePullPolicy: orDefault(in.Mesh.Spec.ImagePullPolicy, corev1.PullIfNotPresent),
		Command:         []string{ProxyCommand},
		Args:            waypointArgs(in),
		Env:             downwardEnv(),
		Ports: []corev1.ContainerPort{
			{Name: "hbone", ContainerPort: PortHBONE, Protocol: corev1.ProtocolTCP},
			{Name: "http-metrics", ContainerPort: PortMetrics, Protocol: corev1.ProtocolTCP},
			{Name: "http-ready", ContainerPort: PortReadiness, Protocol: corev1.ProtocolTCP},
		},
		Resources:       in.Spec.Resources,
		ReadinessProbe:  readinessProbe(),
		LivenessProbe:   livenessProbe(),
		SecurityContext: restrictedSecurityContext(),
		VolumeMounts:    proxyVolumeMounts(),
	}
	return &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name: in.Name, Namespace: in.Namespace, Labels: copyLabels(labels),
			Annotations: map[string]string{AnnotationImage: in.Component.Image},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas,
			Selector: &metav1.LabelSelector{MatchLabels: WaypointSelector(in.Name)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge: new(intstr.FromInt32(1)), MaxUnavailable: new(intstr.FromInt32(0)),
				},
			},
			ProgressDeadlineSeconds: new(orDefault(in.Mesh.Spec.Upgrade.ProgressDeadlineSeconds, 600)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: scrapeAnnotations()},
				Spec: corev1.PodSpec{
					ServiceAccountName:            in.Name,
					AutomountServiceAccountToken:  new(false),
					SecurityContext:               restrictedPodSecurityContext(),
					TerminationGracePeriodSeconds: new(int64(drain) + 5),
					Containers:                    []corev1.Container{container},
					Volumes:                       proxyVolumes(),
					Affinity:                      spreadAcrossNodes(WaypointSelector(in.Name)),
				},
			},
		},
	}
}

func waypointService(in WaypointInputs, labels map[string]string) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: in.Name, Namespace: in.Namespace, Labels: withoutVersion(labels)},
		Spec: corev1.ServiceSpec{
			Selector: WaypointSelector(in.Name),
			Ports: []corev1.ServicePort{
				{Name: "mesh", Port: PortHBONE, TargetPort: intstr.FromInt32(PortHBONE), Protocol: corev1.ProtocolTCP, AppProtocol: new("hbone")},
				{Name: "http-metrics", Port: PortMetrics, TargetPort: intstr.FromInt32(PortMetrics), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

func waypointHPA(in WaypointInputs, labels map[string]string) *autoscalingv2.HorizontalPodAutoscaler {
	a := in.Spec.Autoscaling
	if a == nil {
		return nil
	}
	return &autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: autoscalingv2.SchemeGroupVersion.String(), Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: metav1.ObjectMeta{Name: in.Name, Namespace: in.Namespace, Labels: withoutVersion(labels)},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: in.Name},
			MinReplicas:    new(orDefault(ptrValue(a.MinReplicas), 1)),
			MaxReplicas:    a.MaxReplicas,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{
					Name: corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{
						Type:               autoscalingv2.UtilizationMetricType,
						AverageUtilization: new(orDefault(a.TargetCPUUtilizationPercentage, 80)),
					},
				},
			}},
		},
	}
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
