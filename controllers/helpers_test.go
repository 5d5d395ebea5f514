package controllers_test

import (
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

const (
	meshNS  = "ambient-system"
	timeout = 10 * time.Second
	poll    = 50 * time.Millisecond
)

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func getMesh() *ambientv1alpha1.AmbientMesh {
	m := &ambientv1alpha1.AmbientMesh{}
	ExpectWithOffset(1, k8s.Get(ctx, key("", "default"), m)).To(Succeed())
	return m
}

// sample reads an object from config/samples, as a user would apply it.
func sample(file string, into client.Object) {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "samples", file))
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	ExpectWithOffset(1, yaml.Unmarshal(data, into)).To(Succeed())
}

func condition(conds []metav1.Condition, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return *c
	}
	return metav1.Condition{Type: typ, Status: "Missing"}
}

// haveCondition matches a condition list holding the condition with that status and reason.
func haveCondition(typ string, status metav1.ConditionStatus, reason string) OmegaMatcher {
	return WithTransform(func(conds []metav1.Condition) metav1.Condition { return condition(conds, typ) },
		And(HaveField("Status", status), HaveField("Reason", reason)))
}

func meshConditions() []metav1.Condition { return getMesh().Status.Conditions }

// rollDeployment plays the Deployment controller and the kubelet: every replica runs the current
// template and is available.
func rollDeployment(ns, name string) {
	EventuallyWithOffset(1, func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, name), d); err != nil {
			return err
		}
		r := int32(1)
		if d.Spec.Replicas != nil {
			r = *d.Spec.Replicas
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: r, UpdatedReplicas: r, ReadyReplicas: r, AvailableReplicas: r}
		return k8s.Status().Update(ctx, d)
	}).WithTimeout(timeout).Should(Succeed())
}

// stallDeployment plays a Deployment whose new pods never become ready: one updated, none available
// beyond the old ones.
func stallDeployment(ns, name string) {
	EventuallyWithOffset(1, func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, name), d); err != nil {
			return err
		}
		r := *d.Spec.Replicas
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: r + 1, UpdatedReplicas: 1, ReadyReplicas: r, AvailableReplicas: r, UnavailableReplicas: 1}
		return k8s.Status().Update(ctx, d)
	}).WithTimeout(timeout).Should(Succeed())
}

// rollDaemonSet plays the DaemonSet controller on a cluster of n nodes: every node runs the current
// template and its proxy is available.
func rollDaemonSet(ns, name string, n int32) {
	setDaemonSet(ns, name, n, n, n)
}

func setDaemonSet(ns, name string, desired, updated, available int32) {
	EventuallyWithOffset(2, func() error {
		ds := &appsv1.DaemonSet{}
		if err := k8s.Get(ctx, key(ns, name), ds); err != nil {
			return err
		}
		ds.Status = appsv1.DaemonSetStatus{
			ObservedGeneration: ds.Generation, DesiredNumberScheduled: desired, CurrentNumberScheduled: desired,
			UpdatedNumberScheduled: updated, NumberReady: available, NumberAvailable: available, NumberUnavailable: desired - available,
		}
		return k8s.Status().Update(ctx, ds)
	}).WithTimeout(timeout).Should(Succeed())
}

func deploymentImage(ns, name string) func() string {
	return func() string {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, key(ns, name), d); err != nil {
			return "error: " + err.Error()
		}
		return d.Spec.Template.Spec.Containers[0].Image
	}
}

func daemonSetImage() string {
	ds := &appsv1.DaemonSet{}
	if err := k8s.Get(ctx, key(meshNS, "ambient-node"), ds); err != nil {
		return "error: " + err.Error()
	}
	return ds.Spec.Template.Spec.Containers[0].Image
}

// events returns the reasons of the Events about an object.
func events(obj client.Object) []string {
	list := &eventsv1.EventList{}
	ExpectWithOffset(1, k8s.List(ctx, list)).To(Succeed())
	var reasons []string
	for _, e := range list.Items {
		if e.Regarding.UID == obj.GetUID() {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

func enrollNamespace(name string) {
	EventuallyWithOffset(1, func() error {
		ns := &corev1.Namespace{}
		if err := k8s.Get(ctx, key("", name), ns); err != nil {
			return err
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		ns.Labels[ambientv1alpha1.DataplaneLabel] = ambientv1alpha1.DataplaneEnabled
		return k8s.Update(ctx, ns)
	}).WithTimeout(timeout).Should(Succeed())
}

func createNamespace(name string, labels map[string]string) {
	ExpectWithOffset(1, k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})).To(Succeed())
}

// touch changes an annotation on the mesh, which makes every controller reconcile without changing the
// desired state.
func touchMesh() {
	EventuallyWithOffset(1, func() error {
		m := getMesh()
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		m.Annotations["test/touched"] = time.Now().Format(time.RFC3339Nano)
		return k8s.Update(ctx, m)
	}).WithTimeout(timeout).Should(Succeed())
}

func updateMesh(mutate func(*ambientv1alpha1.AmbientMesh)) {
	EventuallyWithOffset(1, func() error {
		m := getMesh()
		mutate(m)
		return k8s.Update(ctx, m)
	}).WithTimeout(timeout).Should(Succeed())
}
