package install_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers"
	"github.com/ambient-dev/ambient-operator/internal/testenv"
)

const (
	operatorNS = "ambient-operator-system"
	operatorSA = "ambient-operator-controller-manager"
	fieldOwner = client.FieldOwner("install-test")
)

// build runs `kustomize build config/<dir>` with the kustomize library (the version of the pinned
// binary) and decodes the objects as kubectl does.
func build(dir string) []*unstructured.Unstructured {
	GinkgoHelper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(testenv.RepoRoot(), "config", dir))
	Expect(err).NotTo(HaveOccurred())
	stream, err := m.AsYaml()
	Expect(err).NotTo(HaveOccurred())
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		o := &unstructured.Unstructured{}
		err := dec.Decode(&o.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		Expect(err).NotTo(HaveOccurred())
		if len(o.Object) > 0 {
			objs = append(objs, o)
		}
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func typed(objs []*unstructured.Unstructured, kind, name string, into runtime.Object) {
	GinkgoHelper()
	o := find(objs, kind, name)
	Expect(o).NotTo(BeNil(), "%s %s is not in the build", kind, name)
	Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into)).To(Succeed())
}

// normalized is v after a JSON round trip, so that the number types of two decoders compare equal.
func normalized(v any) any {
	GinkgoHelper()
	data, err := json.Marshal(v)
	Expect(err).NotTo(HaveOccurred())
	var out any
	Expect(json.Unmarshal(data, &out)).To(Succeed())
	return out
}

func ref(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
	}
	return fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
}

// applyAll server-side applies objs and returns the objects the API server rejected, with its reason.
func applyAll(objs []*unstructured.Unstructured, opts ...client.ApplyOption) []string {
	var rejected []string
	for _, o := range objs {
		opts := append([]client.ApplyOption{fieldOwner, client.ForceOwnership}, opts...)
		if err := k8s.Apply(ctx, client.ApplyConfigurationFromUnstructured(o.DeepCopy()), opts...); err != nil {
			rejected = append(rejected, fmt.Sprintf("%s: %v", ref(o), err))
		}
	}
	return rejected
}

// The install manifests from the first look at them to the operator running on them with its own rights
// only. Each spec builds on the state the previous one left.
var _ = Describe("The install manifests (kustomize build config/default)", Ordered, func() {
	var objs []*unstructured.Unstructured
	BeforeAll(func() { objs = build("default") })

	It("hold the CRDs, the RBAC, the Deployment and the metrics Service, namespaced in ambient-operator-system", func() {
		kinds := map[string]int{}
		for _, o := range objs {
			kinds[o.GetKind()]++
			mapping, err := k8s.RESTMapper().RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
			if o.GetKind() == "CustomResourceDefinition" || err != nil {
				Expect(err).NotTo(HaveOccurred(), ref(o))
				continue
			}
			if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
				Expect(o.GetNamespace()).To(Equal(operatorNS), ref(o))
			} else {
				Expect(o.GetNamespace()).To(BeEmpty(), ref(o))
			}
			Expect(o.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/part-of", "ambient-operator"), ref(o))
		}
		Expect(kinds).To(Equal(map[string]int{
			"Namespace": 1, "CustomResourceDefinition": 2, "ServiceAccount": 1, "Deployment": 1, "Service": 1,
			"Role": 1, "RoleBinding": 1, "ClusterRole": 7, "ClusterRoleBinding": 2,
		}))
		Expect(find(objs, "Namespace", operatorNS).GetLabels()).To(HaveKeyWithValue("pod-security.kubernetes.io/enforce", "restricted"))
	})

	It("carry the CRDs of config/crd/bases unchanged", func() {
		files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "crd", "bases", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(files).To(HaveLen(2))
		for _, f := range files {
			data, err := os.ReadFile(f)
			Expect(err).NotTo(HaveOccurred())
			want := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal(data, &want.Object)).To(Succeed())
			got := find(objs, "CustomResourceDefinition", want.GetName())
			Expect(got).NotTo(BeNil(), "CRD %s of %s is not installed", want.GetName(), f)
			Expect(normalized(got.Object["spec"])).To(Equal(normalized(want.Object["spec"])), "CRD %s differs from %s", want.GetName(), f)
			Expect(got.GetAnnotations()).To(Equal(want.GetAnnotations()))
		}
	})

	It("wire names, labels and namespaces together", func() {
		dep := &appsv1.Deployment{}
		typed(objs, "Deployment", operatorSA, dep)
		pod := dep.Spec.Template
		for k, v := range dep.Spec.Selector.MatchLabels {
			Expect(pod.Labels).To(HaveKeyWithValue(k, v), "the Deployment's selector must select its own pods")
		}
		Expect(pod.Spec.ServiceAccountName).To(Equal(operatorSA))
		Expect(find(objs, "ServiceAccount", operatorSA)).NotTo(BeNil())
		Expect(pod.Spec.Containers).To(HaveLen(1))
		manager := pod.Spec.Containers[0]
		Expect(manager.Image).To(MatchRegexp(`^ghcr\.io/ambient-dev/ambient-operator:v[0-9]+\.[0-9]+\.[0-9]+$`))
		Expect(manager.Args).To(ContainElements("--leader-elect", "--metrics-bind-address=:8443"))

		svc := &corev1.Service{}
		typed(objs, "Service", "ambient-operator-controller-manager-metrics-service", svc)
		Expect(svc.Spec.Selector).NotTo(BeEmpty())
		for k, v := range svc.Spec.Selector {
			Expect(pod.Labels).To(HaveKeyWithValue(k, v), "the metrics Service must select the operator's pods")
		}
		Expect(svc.Spec.Ports).To(HaveLen(1))
		Expect(manager.Ports).To(ContainElement(HaveField("Name", svc.Spec.Ports[0].TargetPort.StrVal)),
			"the metrics Service's targetPort must name a port of the manager container")

		for _, o := range objs {
			if o.GetKind() != "RoleBinding" && o.GetKind() != "ClusterRoleBinding" {
				continue
			}
			b := &rbacv1.RoleBinding{}
			Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, b)).To(Succeed())
			role := find(objs, b.RoleRef.Kind, b.RoleRef.Name)
			Expect(role).NotTo(BeNil(), "%s refers to %s %s, which is not installed", ref(o), b.RoleRef.Kind, b.RoleRef.Name)
			Expect(role.GetNamespace()).To(Equal(o.GetNamespace()), "%s and its role are in different namespaces", ref(o))
			Expect(b.Subjects).To(ConsistOf(rbacv1.Subject{Kind: "ServiceAccount", Name: operatorSA, Namespace: operatorNS}), ref(o))
		}
		Expect(find(objs, "Role", "ambient-operator-leader-election-role").GetNamespace()).To(Equal(operatorNS))
	})

	It("are accepted by the API server: a server-side apply dry run of every object", func() {
		// A namespaced object can only be tried in a namespace that exists: create that one for real.
		Expect(applyAll([]*unstructured.Unstructured{find(objs, "Namespace", operatorNS)})).To(BeEmpty())
		Expect(applyAll(objs, client.DryRunAll)).To(BeEmpty())
		err := k8s.Get(ctx, client.ObjectKey{Name: "ambientmeshes.ambient.dev"}, &apiextensionsv1.CustomResourceDefinition{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a dry run persists nothing")
	})

	It("install: every object applies and the CRDs become Established", func() {
		Expect(applyAll(objs)).To(BeEmpty())
		for _, name := range []string{"ambientmeshes.ambient.dev", "waypoints.ambient.dev"} {
			Eventually(func(g Gomega) {
				crd := &apiextensionsv1.CustomResourceDefinition{}
				g.Expect(k8s.Get(ctx, client.ObjectKey{Name: name}, crd)).To(Succeed())
				established := false
				for _, c := range crd.Status.Conditions {
					established = established || c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue
				}
				g.Expect(established).To(BeTrue())
			}).Should(Succeed(), name)
		}
	})

	It("run an operator pod that the namespace's restricted Pod Security admits", func() {
		dep := &appsv1.Deployment{}
		typed(objs, "Deployment", operatorSA, dep)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: "operator-pod", Labels: dep.Spec.Template.Labels},
			Spec:       dep.Spec.Template.Spec,
		}
		Expect(k8s.Create(ctx, pod, client.DryRunAll)).To(Succeed())
	})

	It("give the operator's service account the rights the operator uses", func() {
		user := "system:serviceaccount:" + operatorNS + ":" + operatorSA
		checks := []authorizationv1.ResourceAttributes{
			{Namespace: operatorNS, Group: "coordination.k8s.io", Resource: "leases", Verb: "update"},
			{Namespace: operatorNS, Resource: "events", Verb: "create"},
			{Group: "ambient.dev", Resource: "ambientmeshes", Verb: "watch"},
			{Group: "ambient.dev", Resource: "ambientmeshes", Subresource: "status", Verb: "patch"},
			{Group: "ambient.dev", Resource: "ambientmeshes", Subresource: "finalizers", Verb: "update"},
			{Namespace: "any", Group: "ambient.dev", Resource: "waypoints", Subresource: "status", Verb: "patch"},
			{Namespace: "ambient-system", Group: "apps", Resource: "daemonsets", Verb: "patch"},
			{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "create"},
			{Group: "gateway.networking.k8s.io", Resource: "gatewayclasses", Verb: "delete"},
			{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"},
			{Group: "authorization.k8s.io", Resource: "subjectaccessreviews", Verb: "create"},
		}
		for _, ra := range checks {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNS, "system:authenticated"},
				ResourceAttributes: &ra,
			}}
			Expect(k8s.Create(ctx, sar)).To(Succeed())
			Expect(sar.Status.Allowed).To(BeTrue(), "%s may not %s %s/%s %s in %q", operatorSA, ra.Verb, ra.Group, ra.Resource, ra.Subresource, ra.Namespace)
		}
	})

	It("accept the samples", func() {
		samples := build("samples")
		Expect(samples).NotTo(BeEmpty())
		Expect(applyAll(samples, client.DryRunAll)).To(BeEmpty())
	})

	It("run the operator with its service account's rights only: it reconciles the samples and finalizes the mesh", func() {
		opCfg := rest.CopyConfig(cfg)
		opCfg.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + operatorNS + ":" + operatorSA,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNS, "system:authenticated"},
		}
		// As main.go sets the manager up, with leader election in the operator's namespace as in-cluster.
		mgr, err := ctrl.NewManager(opCfg, ctrl.Options{
			Scheme:                  testenv.Scheme,
			Cache:                   controllers.CacheOptions(),
			Metrics:                 metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress:  "0",
			LeaderElection:          true,
			LeaderElectionID:        "ambient-operator.ambient.dev",
			LeaderElectionNamespace: operatorNS,
		})
		Expect(err).NotTo(HaveOccurred())
		gatewayAPI, err := controllers.Setup(mgr, controllers.Options{Registry: "registry.test"})
		Expect(err).NotTo(HaveOccurred())
		Expect(gatewayAPI).To(BeTrue(), "the suite installs the Gateway API CRDs")
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(ctx)).To(Succeed())
		}()

		// The sample waypoint serves the default namespace, which must be in the mesh.
		ns := &corev1.Namespace{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: "default"}, ns)).To(Succeed())
		ns.Labels["ambient.dev/dataplane"] = "enabled"
		Expect(k8s.Update(ctx, ns)).To(Succeed())
		Expect(applyAll(build("samples"))).To(BeEmpty())
		mesh := &ambientv1alpha1.AmbientMesh{}
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: ambientv1alpha1.AmbientMeshName}, mesh)).To(Succeed())
			c := meta.FindStatusCondition(mesh.Status.Conditions, ambientv1alpha1.ConditionReconciled)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), c.Message)
			g.Expect(mesh.Status.ObservedGeneration).To(Equal(mesh.Generation))
		}).WithTimeout(30 * time.Second).Should(Succeed())
		for _, obj := range []client.Object{
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: mesh.Spec.Namespace, Name: "ambient-node"}},
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: mesh.Spec.Namespace, Name: "ambient-xds"}},
			&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ambient-xds"}},
			&gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: ambientv1alpha1.WaypointGatewayClass}},
		} {
			Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed(), "%T %s", obj, obj.GetName())
		}
		Eventually(func(g Gomega) {
			wp := &ambientv1alpha1.Waypoint{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: "default", Name: "waypoint"}, wp)).To(Succeed())
			c := meta.FindStatusCondition(wp.Status.Conditions, ambientv1alpha1.ConditionAccepted)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), c.Message)
		}).WithTimeout(30 * time.Second).Should(Succeed())

		// Uninstall as docs/install.md says: the mesh first, whose finalizer removes the cluster-scoped objects.
		Expect(k8s.Delete(ctx, mesh)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(mesh), mesh))
		}).WithTimeout(30*time.Second).Should(BeTrue(), "the finalizer runs with the operator's rights")
		for _, obj := range []client.Object{
			&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ambient-xds"}},
			&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ambient-xds"}},
			&gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: ambientv1alpha1.WaypointGatewayClass}},
		} {
			err := k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)
			Expect(apierrors.IsNotFound(err) || obj.GetDeletionTimestamp() != nil).To(BeTrue(), "%T %s is left behind", obj, obj.GetName())
		}
	})
})
