package ambientmesh

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// replaceNextNode drives the NodeByNode strategy (DaemonSet OnDelete): it deletes the old node proxy of one
// node, and the next one only after every new proxy is ready and every old one has finished draining. The
// DaemonSet controller starts the new proxy as soon as the old one terminates; the old one keeps serving
// its open connections for the drain time while the new one takes new connections on the same ports.
func (r *Reconciler) replaceNextNode(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh, target render.Component) error {
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(mesh.Spec.Namespace), client.MatchingLabels{render.LabelName: render.NodeName}); err != nil {
		return fmt.Errorf("list node proxy pods: %w", err)
	}
	var old []*corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if !p.DeletionTimestamp.IsZero() {
			return nil // a node is still draining
		}
		if p.Labels[render.LabelDataplaneVersion] != target.Version || podImage(p) != target.Image {
			old = append(old, p)
			continue
		}
		if !podReady(p) {
			return nil // a new proxy is still starting
		}
	}
	if len(old) == 0 {
		return nil
	}
	slices.SortFunc(old, func(a, b *corev1.Pod) int {
		if a.Spec.NodeName != b.Spec.NodeName {
			if a.Spec.NodeName < b.Spec.NodeName {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	next := old[0]
	if err := r.Client.Delete(ctx, next); err != nil {
		return client.IgnoreNotFound(err)
	}
	ctrl.LoggerFrom(ctx).Info("Replacing the node proxy of one node", "pod", klog.KObj(next), "node", next.Spec.NodeName, "remaining", len(old)-1)
	r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonNodeByNodeReplace, "Rollout",
		"Replacing the node proxy on node %s (%d more to go)", next.Spec.NodeName, len(old)-1)
	return nil
}

func podImage(p *corev1.Pod) string {
	for _, c := range p.Spec.Containers {
		if c.Name == "node-proxy" {
			return c.Image
		}
	}
	return ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
