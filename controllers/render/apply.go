package render

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// AnnotationAppliedHash records the hash of what the operator last applied to an object. Together with
// a field-by-field comparison it lets the operator skip writes in steady state (the hash catches fields
// the operator stopped setting, the comparison catches hand edits of fields it owns).
const AnnotationAppliedHash = "ambient.dev/applied-hash"

// Applier applies desired objects with server-side apply under FieldOwner, and only when the live object
// differs: a converged mesh makes no writes.
type Applier struct {
	// Client reads live objects (normally from the cache) and writes applies.
	Client client.Client
	Scheme *runtime.Scheme
}

// Apply makes the desired object's fields true in the cluster. When owner is not nil it becomes the
// controller owner reference. It reports whether it wrote.
func (a *Applier) Apply(ctx context.Context, owner, desired client.Object) (bool, error) {
	if owner != nil {
		if err := controllerutil.SetControllerReference(owner, desired, a.Scheme); err != nil {
			return false, fmt.Errorf("set owner of %s: %w", describe(desired), err)
		}
	}
	gvk, err := apiutil.GVKForObject(desired, a.Scheme)
	if err != nil {
		return false, fmt.Errorf("kind of %s: %w", describe(desired), err)
	}
	want, err := toApplyMap(desired)
	if err != nil {
		return false, err
	}
	hash, err := hashOf(want)
	if err != nil {
		return false, err
	}
	setAnnotation(want, AnnotationAppliedHash, hash)

	live, err := a.Scheme.New(gvk)
	if err != nil {
		return false, fmt.Errorf("new %s: %w", gvk.Kind, err)
	}
	liveObj := live.(client.Object)
	switch err := a.Client.Get(ctx, client.ObjectKeyFromObject(desired), liveObj); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, fmt.Errorf("get %s: %w", describe(desired), err)
	default:
		liveMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(liveObj)
		if err != nil {
			return false, fmt.Errorf("convert live %s: %w", describe(desired), err)
		}
		if contains(liveMap, want) {
			return false, nil
		}
	}
	u := &unstructured.Unstructured{Object: want}
	u.SetGroupVersionKind(gvk)
	if err := a.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return false, fmt.Errorf("apply %s %s: %w", gvk.Kind, describe(desired), err)
	}
	return true, nil
}

// DeleteIfExists deletes an object the operator no longer wants (a PodDisruptionBudget that was disabled,
// an autoscaler that was removed). It reports whether it deleted.
func (a *Applier) DeleteIfExists(ctx context.Context, obj client.Object) (bool, error) {
	if err := a.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if err := a.Client.Delete(ctx, obj); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return true, nil
}

func describe(obj client.Object) string {
	if obj.GetNamespace() == "" {
		return obj.GetName()
	}
	return obj.GetNamespace() + "/" + obj.GetName()
}

// toApplyMap converts a typed object into the map an apply sends: no status, no server-owned metadata, no
// nulls and no empty maps or lists (which would claim ownership of nothing).
func toApplyMap(obj client.Object) (map[string]any, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", describe(obj), err)
	}
	delete(m, "status")
	if md, ok := m["metadata"].(map[string]any); ok {
		for _, k := range []string{"creationTimestamp", "resourceVersion", "uid", "generation", "managedFields", "selfLink"} {
			delete(md, k)
		}
	}
	prune(m)
	return m, nil
}

// prune removes nil values and empty maps and lists, recursively; it reports whether m became empty.
func prune(v any) bool {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if e == nil || prune(e) {
				delete(t, k)
			}
		}
		return len(t) == 0
	case []any:
		for _, e := range t {
			prune(e)
		}
		return len(t) == 0
	}
	return false
}

func hashOf(m map[string]any) (string, error) {
	b, err := json.Marshal(m) // map keys are sorted: the encoding is canonical
	if err != nil {
		return "", fmt.Errorf("hash desired object: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), nil
}

func setAnnotation(m map[string]any, key, value string) {
	md, _ := m["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		m["metadata"] = md
	}
	ann, _ := md["annotations"].(map[string]any)
	if ann == nil {
		ann = map[string]any{}
		md["annotations"] = ann
	}
	ann[key] = value
}

// contains reports whether every field of want is present in have with the same value. Lists must have
// the same length and match element by element; maps may hold more keys in have (defaults the API server
// filled in, fields other managers own).
func contains(have, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			hv, ok := h[k]
			if !ok || !contains(hv, wv) {
				return false
			}
		}
		return true
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return false
		}
		for i := range w {
			if !contains(h[i], w[i]) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(have, want)
	}
}
