// Package bundle assembles the OLM bundle (registry+v1) of the operator from the objects that
// `kustomize build config/manifests` produces: the hand-written ClusterServiceVersion base, the operator as
// config/default installs it, the samples and the scorecard configuration. It does what
// `operator-sdk generate bundle` does, deterministically and without the operator-sdk binary.
package bundle

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/operator-framework/api/pkg/lib/version"
	operatorsv1alpha1 "github.com/operator-framework/api/pkg/operators/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// Options are what the bundle takes from the release rather than from config/.
type Options struct {
	// Package is the OLM package name, for example ambient-operator.
	Package string
	// Version of the operator, a semantic version without a leading v (0.1.0).
	Version string
	// OperatorImage replaces the image of every container of the operator's Deployments; empty keeps the
	// image config/ sets.
	OperatorImage string
	// ManagerArgs are appended to the arguments of the operator's container named "manager".
	ManagerArgs []string
	// RelatedImages are images the operator runs besides its own (the data plane), name to image.
	RelatedImages map[string]string
	// Channels the bundle is in; DefaultChannel is the one a Subscription without a channel follows.
	Channels       []string
	DefaultChannel string
	// Replaces is the CSV this one upgrades from, empty for the first release.
	Replaces string
	// IconSVG is the operator's icon, an SVG document.
	IconSVG []byte
}

// ManagedByLabel is dropped from every object of the bundle: config/default sets it to "kustomize",
// which is not true of what OLM installs.
const ManagedByLabel = "app.kubernetes.io/managed-by"

// Dockerfile is the path of the bundle image's Dockerfile among the files Generate returns; every other
// path is inside the bundle directory.
const Dockerfile = "../bundle.Dockerfile"

// Generate returns the files of the bundle, by path relative to the bundle directory.
func Generate(objs []*unstructured.Unstructured, opts Options) (map[string][]byte, error) {
	if _, err := semver.Parse(opts.Version); err != nil {
		return nil, fmt.Errorf("version %q is not a semantic version (MAJOR.MINOR.PATCH, no leading v): %w", opts.Version, err)
	}
	if opts.Package == "" || len(opts.Channels) == 0 || !slices.Contains(opts.Channels, opts.DefaultChannel) {
		return nil, fmt.Errorf("a package name, channels and a default channel among them are required (got %q, %v, %q)",
			opts.Package, opts.Channels, opts.DefaultChannel)
	}
	g := &generator{opts: opts, files: map[string][]byte{}}
	if err := g.sort(objs); err != nil {
		return nil, err
	}
	if err := g.csvFile(); err != nil {
		return nil, err
	}
	g.metadata()
	return g.files, nil
}

type generator struct {
	opts  Options
	files map[string][]byte

	csv         *unstructured.Unstructured
	scorecard   *unstructured.Unstructured
	crds        []*apiextensionsv1.CustomResourceDefinition
	deployments []*appsv1.Deployment
	roles       map[string]*unstructured.Unstructured // kind/namespace/name of Roles and ClusterRoles
	bindings    []*unstructured.Unstructured
	others      []*unstructured.Unstructured // installed by OLM as they are
	samples     []*unstructured.Unstructured
	operatorNS  string
	ownedGroups map[string]bool
}

// Kinds OLM installs from a bundle as they are (besides the CSV and CRDs).
var passThroughKinds = map[string]bool{
	"Service": true, "ConfigMap": true, "Secret": true, "ClusterRole": true, "Role": true,
	"ClusterRoleBinding": true, "RoleBinding": true, "ServiceAccount": true, "PodDisruptionBudget": true,
	"PriorityClass": true, "NetworkPolicy": true, "ServiceMonitor": true, "PrometheusRule": true,
	"VerticalPodAutoscaler": true, "ConsoleYAMLSample": true, "ConsoleQuickStart": true,
	"ConsoleCLIDownload": true, "ConsoleLink": true,
}

func key(kind, namespace, name string) string { return kind + "/" + namespace + "/" + name }

func (g *generator) sort(objs []*unstructured.Unstructured) error {
	g.roles = map[string]*unstructured.Unstructured{}
	g.ownedGroups = map[string]bool{}
	var rest []*unstructured.Unstructured
	for _, o := range objs {
		o = o.DeepCopy()
		dropLabel(o, ManagedByLabel)
		switch o.GetKind() {
		case "ClusterServiceVersion":
			if g.csv != nil {
				return fmt.Errorf("more than one ClusterServiceVersion in the input: %s and %s", g.csv.GetName(), o.GetName())
			}
			g.csv = o
		case "Configuration":
			g.scorecard = o
		case "CustomResourceDefinition":
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := fromUnstructured(o, crd); err != nil {
				return fmt.Errorf("CustomResourceDefinition %s: %w", o.GetName(), err)
			}
			g.crds = append(g.crds, crd)
			g.ownedGroups[crd.Spec.Group] = true
			g.others = append(g.others, o) // written as it is, below
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := fromUnstructured(o, d); err != nil {
				return fmt.Errorf("deployment %s: %w", o.GetName(), err)
			}
			g.deployments = append(g.deployments, d)
			if g.operatorNS != "" && g.operatorNS != d.Namespace {
				return fmt.Errorf("the operator's Deployments are in two namespaces, %s and %s", g.operatorNS, d.Namespace)
			}
			g.operatorNS = d.Namespace
		case "Namespace":
			// OLM installs into the namespace of the OperatorGroup.
		default:
			rest = append(rest, o)
		}
	}
	if g.csv == nil {
		return fmt.Errorf("no ClusterServiceVersion in the input: config/manifests must include the CSV base")
	}
	if len(g.deployments) == 0 {
		return fmt.Errorf("no Deployment in the input: config/manifests must include config/default")
	}
	for _, o := range rest {
		gv := strings.SplitN(o.GetAPIVersion(), "/", 2)[0]
		switch {
		case g.ownedGroups[gv]:
			g.samples = append(g.samples, o)
		case o.GetKind() == "Role" || o.GetKind() == "ClusterRole":
			g.roles[key(o.GetKind(), o.GetNamespace(), o.GetName())] = o
		case o.GetKind() == "RoleBinding" || o.GetKind() == "ClusterRoleBinding":
			g.bindings = append(g.bindings, o)
		case passThroughKinds[o.GetKind()]:
			g.others = append(g.others, o)
		default:
			return fmt.Errorf("%s %s (%s): OLM bundles cannot carry this kind; remove it from config/default or teach hack/release/internal/bundle about it",
				o.GetKind(), o.GetName(), o.GetAPIVersion())
		}
	}
	return nil
}

func (g *generator) csvFile() error {
	csv := &operatorsv1alpha1.ClusterServiceVersion{}
	raw, err := json.Marshal(g.csv.Object)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(csv); err != nil {
		return fmt.Errorf("the ClusterServiceVersion base has a field the CSV API does not know: %w", err)
	}

	csv.Name = g.opts.Package + ".v" + g.opts.Version
	csv.Spec.Version = version.OperatorVersion{Version: semver.MustParse(g.opts.Version)}
	csv.Spec.Replaces = g.opts.Replaces
	if len(g.opts.IconSVG) > 0 {
		csv.Spec.Icon = []operatorsv1alpha1.Icon{{Data: base64.StdEncoding.EncodeToString(g.opts.IconSVG), MediaType: "image/svg+xml"}}
	}

	if err := g.ownedCRDs(csv); err != nil {
		return err
	}
	operatorImage, err := g.install(csv)
	if err != nil {
		return err
	}
	examples, err := g.almExamples()
	if err != nil {
		return err
	}
	if csv.Annotations == nil {
		csv.Annotations = map[string]string{}
	}
	csv.Annotations["alm-examples"] = examples
	csv.Annotations["containerImage"] = operatorImage

	csv.Spec.RelatedImages = []operatorsv1alpha1.RelatedImage{{Name: g.opts.Package, Image: operatorImage}}
	names := make([]string, 0, len(g.opts.RelatedImages))
	for name := range g.opts.RelatedImages {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		csv.Spec.RelatedImages = append(csv.Spec.RelatedImages, operatorsv1alpha1.RelatedImage{Name: name, Image: g.opts.RelatedImages[name]})
	}

	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(csv)
	if err != nil {
		return err
	}
	delete(obj, "status")
	unstructured.RemoveNestedField(obj, "metadata", "creationTimestamp")
	deps, _, _ := unstructured.NestedSlice(obj, "spec", "install", "spec", "deployments")
	for _, d := range deps {
		unstructured.RemoveNestedField(d.(map[string]any), "spec", "template", "metadata", "creationTimestamp")
	}
	_ = unstructured.SetNestedSlice(obj, deps, "spec", "install", "spec", "deployments")
	return g.write("manifests/"+g.opts.Package+".clusterserviceversion.yaml", obj)
}

// ownedCRDs completes the base's owned CRDs from the CRDs themselves and checks that each descriptor
// path exists in the schema, so that a renamed field fails the build instead of a console form.
func (g *generator) ownedCRDs(csv *operatorsv1alpha1.ClusterServiceVersion) error {
	base := map[string]operatorsv1alpha1.CRDDescription{}
	for _, d := range csv.Spec.CustomResourceDefinitions.Owned {
		base[d.Name] = d
	}
	var owned []operatorsv1alpha1.CRDDescription
	for _, crd := range g.crds {
		d, ok := base[crd.Name]
		if !ok {
			return fmt.Errorf("CRD %s is installed but not described in the CSV base: add it to spec.customresourcedefinitions.owned", crd.Name)
		}
		delete(base, crd.Name)
		var storage *apiextensionsv1.CustomResourceDefinitionVersion
		for i := range crd.Spec.Versions {
			if crd.Spec.Versions[i].Storage {
				storage = &crd.Spec.Versions[i]
			}
		}
		if storage == nil {
			return fmt.Errorf("CRD %s has no storage version", crd.Name)
		}
		d.Kind, d.Version = crd.Spec.Names.Kind, storage.Name
		if storage.Schema == nil || storage.Schema.OpenAPIV3Schema == nil {
			return fmt.Errorf("CRD %s version %s has no schema", crd.Name, storage.Name)
		}
		root := storage.Schema.OpenAPIV3Schema
		for _, sd := range d.SpecDescriptors {
			if err := schemaHas(root, "spec", sd.Path); err != nil {
				return fmt.Errorf("CSV base, %s specDescriptor %q: %w", crd.Name, sd.Path, err)
			}
		}
		for _, sd := range d.StatusDescriptors {
			if err := schemaHas(root, "status", sd.Path); err != nil {
				return fmt.Errorf("CSV base, %s statusDescriptor %q: %w", crd.Name, sd.Path, err)
			}
		}
		owned = append(owned, d)
	}
	for name := range base {
		return fmt.Errorf("the CSV base describes CRD %s, which config/default does not install", name)
	}
	csv.Spec.CustomResourceDefinitions.Owned = owned
	return nil
}

func schemaHas(root *apiextensionsv1.JSONSchemaProps, top, p string) error {
	s, ok := root.Properties[top]
	if !ok {
		return fmt.Errorf("the CRD schema has no %s", top)
	}
	walked := top
	for _, part := range strings.Split(p, ".") {
		name, _, indexed := strings.Cut(part, "[")
		next, ok := s.Properties[name]
		if !ok {
			return fmt.Errorf("the CRD schema has no field %s.%s", walked, name)
		}
		s, walked = next, walked+"."+name
		if indexed {
			if s.Items == nil || s.Items.Schema == nil {
				return fmt.Errorf("%s is not a list", walked)
			}
			s = *s.Items.Schema
		}
	}
	return nil
}

// install fills the deployment install strategy: the Deployments, and the rules of the roles bound to
// their service accounts as permissions (namespaced) and clusterPermissions. It returns the operator image.
func (g *generator) install(csv *operatorsv1alpha1.ClusterServiceVersion) (string, error) {
	spec := operatorsv1alpha1.StrategyDetailsDeployment{}
	operatorImage := ""
	accounts := map[string]bool{}
	for _, d := range g.deployments {
		d := d.DeepCopy()
		manager := false
		for i := range d.Spec.Template.Spec.Containers {
			c := &d.Spec.Template.Spec.Containers[i]
			if g.opts.OperatorImage != "" {
				c.Image = g.opts.OperatorImage
			}
			if operatorImage == "" {
				operatorImage = c.Image
			}
			if c.Name == "manager" {
				manager = true
				c.Args = append(c.Args, g.opts.ManagerArgs...)
			}
		}
		if len(g.opts.ManagerArgs) > 0 && !manager {
			return "", fmt.Errorf("deployment %s has no container named manager to pass %v to", d.Name, g.opts.ManagerArgs)
		}
		sa := d.Spec.Template.Spec.ServiceAccountName
		if sa == "" {
			return "", fmt.Errorf("deployment %s has no serviceAccountName: OLM binds the CSV's permissions to named service accounts", d.Name)
		}
		accounts[sa] = true
		spec.DeploymentSpecs = append(spec.DeploymentSpecs, operatorsv1alpha1.StrategyDeploymentSpec{
			Name: d.Name, Spec: d.Spec, Label: d.Labels,
		})
	}

	perms := map[string][]rbacv1.PolicyRule{}
	clusterPerms := map[string][]rbacv1.PolicyRule{}
	usedRoles := map[string]bool{}
	sort.SliceStable(g.bindings, func(i, j int) bool { return g.bindings[i].GetName() < g.bindings[j].GetName() })
	for _, b := range g.bindings {
		rb := &rbacv1.RoleBinding{} // a ClusterRoleBinding has the same roleRef and subjects
		if err := fromUnstructured(b, rb); err != nil {
			return "", fmt.Errorf("%s %s: %w", b.GetKind(), b.GetName(), err)
		}
		var sas []string
		for _, s := range rb.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && s.Namespace == g.operatorNS && accounts[s.Name] {
				sas = append(sas, s.Name)
			}
		}
		if len(sas) == 0 {
			g.others = append(g.others, b) // binds someone else: OLM installs it as it is
			continue
		}
		if len(sas) != len(rb.Subjects) {
			return "", fmt.Errorf("%s %s binds the operator's service account and others: split it", b.GetKind(), b.GetName())
		}
		roleNS := ""
		if rb.RoleRef.Kind == "Role" {
			roleNS = b.GetNamespace()
		}
		roleKey := key(rb.RoleRef.Kind, roleNS, rb.RoleRef.Name)
		role, ok := g.roles[roleKey]
		if !ok {
			return "", fmt.Errorf("%s %s refers to %s %s, which is not in config/default", b.GetKind(), b.GetName(), rb.RoleRef.Kind, rb.RoleRef.Name)
		}
		usedRoles[roleKey] = true
		r := &rbacv1.ClusterRole{}
		if err := fromUnstructured(role, r); err != nil {
			return "", fmt.Errorf("%s %s: %w", role.GetKind(), role.GetName(), err)
		}
		target := clusterPerms
		if b.GetKind() == "RoleBinding" {
			if b.GetNamespace() != g.operatorNS {
				return "", fmt.Errorf("RoleBinding %s/%s grants the operator rights outside its namespace %s, which a CSV cannot express",
					b.GetNamespace(), b.GetName(), g.operatorNS)
			}
			target = perms
		}
		for _, sa := range sas {
			target[sa] = append(target[sa], r.Rules...)
		}
	}
	for k, r := range g.roles {
		if !usedRoles[k] {
			g.others = append(g.others, r)
		}
	}
	for _, o := range g.others {
		if o.GetKind() == "ServiceAccount" && accounts[o.GetName()] {
			o.SetKind("") // OLM creates the service accounts it binds; marked for removal below
		}
	}
	g.others = slices.DeleteFunc(g.others, func(o *unstructured.Unstructured) bool { return o.GetKind() == "" })
	spec.Permissions = permissions(perms)
	spec.ClusterPermissions = permissions(clusterPerms)
	csv.Spec.InstallStrategy = operatorsv1alpha1.NamedInstallStrategy{
		StrategyName: operatorsv1alpha1.InstallStrategyNameDeployment,
		StrategySpec: spec,
	}

	for _, o := range g.others {
		if err := g.writeObject(o); err != nil {
			return "", err
		}
	}
	return operatorImage, nil
}

func permissions(m map[string][]rbacv1.PolicyRule) []operatorsv1alpha1.StrategyDeploymentPermissions {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []operatorsv1alpha1.StrategyDeploymentPermissions
	for _, n := range names {
		out = append(out, operatorsv1alpha1.StrategyDeploymentPermissions{ServiceAccountName: n, Rules: m[n]})
	}
	return out
}

// almExamples is the JSON list of the samples of owned kinds, in the order config/samples lists them.
func (g *generator) almExamples() (string, error) {
	kinds := map[string]bool{}
	for _, crd := range g.crds {
		kinds[crd.Spec.Names.Kind] = true
	}
	seen := map[string]bool{}
	examples := []map[string]any{}
	for _, s := range g.samples {
		if !kinds[s.GetKind()] {
			return "", fmt.Errorf("sample %s %s is of a kind of %s that no CRD of config/crd defines", s.GetKind(), s.GetName(), s.GetAPIVersion())
		}
		seen[s.GetKind()] = true
		examples = append(examples, s.Object)
	}
	for k := range kinds {
		if !seen[k] {
			return "", fmt.Errorf("no sample of %s in config/samples: alm-examples needs one per owned CRD", k)
		}
	}
	out, err := json.MarshalIndent(examples, "", "  ")
	return string(out), err
}

func (g *generator) metadata() {
	ann := g.annotations()
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("annotations:\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %s\n", k, ann[k])
	}
	g.files["metadata/annotations.yaml"] = []byte(b.String())

	var d strings.Builder
	d.WriteString("# The OLM bundle image, generated by `make bundle`: docker build -f bundle.Dockerfile -t <bundle-image> .\n")
	d.WriteString("FROM scratch\n\n")
	for _, k := range keys {
		fmt.Fprintf(&d, "LABEL %s=%s\n", k, ann[k])
	}
	d.WriteString("\nCOPY bundle/manifests /manifests/\nCOPY bundle/metadata /metadata/\n")
	if g.scorecard != nil {
		d.WriteString("COPY bundle/tests/scorecard /tests/scorecard/\n")
	}
	g.files[Dockerfile] = []byte(d.String())
	if g.scorecard != nil {
		_ = g.write("tests/scorecard/config.yaml", g.scorecard.Object)
	}
}

func (g *generator) annotations() map[string]string {
	ann := map[string]string{
		"operators.operatorframework.io.bundle.mediatype.v1":       "registry+v1",
		"operators.operatorframework.io.bundle.manifests.v1":       "manifests/",
		"operators.operatorframework.io.bundle.metadata.v1":        "metadata/",
		"operators.operatorframework.io.bundle.package.v1":         g.opts.Package,
		"operators.operatorframework.io.bundle.channels.v1":        strings.Join(g.opts.Channels, ","),
		"operators.operatorframework.io.bundle.channel.default.v1": g.opts.DefaultChannel,
	}
	if g.scorecard != nil {
		ann["operators.operatorframework.io.test.mediatype.v1"] = "scorecard+v1"
		ann["operators.operatorframework.io.test.config.v1"] = "tests/scorecard/"
	}
	return ann
}

// writeObject writes an object OLM installs as it is, named the way operator-sdk names them.
func (g *generator) writeObject(o *unstructured.Unstructured) error {
	if o.GetKind() == "CustomResourceDefinition" {
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		plural, _, _ := unstructured.NestedString(o.Object, "spec", "names", "plural")
		return g.write("manifests/"+group+"_"+plural+".yaml", o.Object)
	}
	o.SetNamespace("") // OLM puts namespaced objects in the install namespace
	gv := strings.ReplaceAll(o.GetAPIVersion(), "/", "_")
	return g.write(path.Join("manifests", o.GetName()+"_"+gv+"_"+strings.ToLower(o.GetKind())+".yaml"), o.Object)
}

func (g *generator) write(name string, obj map[string]any) error {
	if _, dup := g.files[name]; dup {
		return fmt.Errorf("two bundle objects would be written to %s", name)
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	g.files[name] = out
	return nil
}

func dropLabel(o *unstructured.Unstructured, label string) {
	l := o.GetLabels()
	if _, ok := l[label]; !ok {
		return
	}
	delete(l, label)
	if len(l) == 0 {
		l = nil
	}
	o.SetLabels(l)
}

func fromUnstructured(o *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true)
}
