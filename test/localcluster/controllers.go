package localcluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// control plays the kubelet (readiness), the DaemonSet, Deployment and EndpointSlice controllers, and
// kube-proxy (service addresses), until ctx ends.
func (c *Cluster) control(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, step := range []struct {
			name string
			f    func(context.Context) error
		}{
			{"pods", c.syncPods}, {"daemonsets", c.syncDaemonSets}, {"deployments", c.syncDeployments},
			{"endpointslices", c.syncEndpoints}, {"services", c.syncServiceRules},
		} {
			if err := step.f(ctx); err != nil && ctx.Err() == nil {
				c.progress("  (cluster: %s: %v)", step.name, err)
			}
		}
	}
}

// syncPods probes readiness, reports it, and stops pods that were deleted through the API (for example by
// the operator replacing a node proxy).
func (c *Cluster) syncPods(ctx context.Context) error {
	for _, p := range c.Pods() {
		obj := &corev1.Pod{}
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, obj)
		if apierrors.IsNotFound(err) || (err == nil && (obj.DeletionTimestamp != nil || string(obj.UID) != p.UID)) {
			go p.Delete(context.WithoutCancel(ctx))
			continue
		}
		if err != nil {
			return err
		}
		ready := p.probe(ctx)
		p.mu.Lock()
		changed := ready != p.ready
		p.ready = ready
		p.mu.Unlock()
		if !changed {
			continue
		}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		for i := range obj.Status.Conditions {
			if obj.Status.Conditions[i].Type == corev1.PodReady {
				obj.Status.Conditions[i].Status = status
				obj.Status.Conditions[i].LastTransitionTime = metav1.Now()
			}
		}
		obj.Status.ContainerStatuses = nil
		for _, ctr := range obj.Spec.Containers {
			obj.Status.ContainerStatuses = append(obj.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: ctr.Name, Image: ctr.Image, Ready: ready, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			})
		}
		if err := c.Client.Status().Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
	}
	return nil
}

// podsOf returns the running pods a controller (by UID) made.
func (c *Cluster) podsOf(ctx context.Context, ns string, owner ownerUID) ([]*Pod, error) {
	list := &corev1.PodList{}
	if err := c.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var out []*Pod
	for _, obj := range list.Items {
		ref := metav1.GetControllerOf(&obj)
		if ref == nil || string(ref.UID) != owner.uid || obj.DeletionTimestamp != nil {
			continue
		}
		if p := c.Pod(obj.Namespace + "/" + obj.Name); p != nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type ownerUID struct{ uid string }

func newPodFrom(t corev1.PodTemplateSpec, ns, name, hash string, owner metav1.OwnerReference) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: *t.ObjectMeta.DeepCopy(), Spec: *t.Spec.DeepCopy()}
	pod.Namespace, pod.Name = ns, name
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[templateHashLabel] = hash
	pod.OwnerReferences = []metav1.OwnerReference{owner}
	return pod
}

func controllerRef(obj metav1.Object, kind string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: obj.GetName(), UID: obj.GetUID(), Controller: new(true), BlockOwnerDeletion: new(true)}
}

// syncDaemonSets runs one pod per node; on a template change it surges (new pod beside the old one, the
// old one deleted once the new one is ready) or, with OnDelete, waits for someone to delete old pods.
func (c *Cluster) syncDaemonSets(ctx context.Context) error {
	list := &appsv1.DaemonSetList{}
	if err := c.Client.List(ctx, list); err != nil {
		return err
	}
	for i := range list.Items {
		ds := &list.Items[i]
		hash := templateHash(ds.Spec.Template)
		pods, err := c.podsOf(ctx, ds.Namespace, ownerUID{string(ds.UID)})
		if err != nil {
			return err
		}
		var updated, ready, current int32
		for _, n := range c.nodesFor(ds.Spec.Template.Spec.NodeSelector) {
			var oldPods, newPods []*Pod
			for _, p := range pods {
				if p.Node != n {
					continue
				}
				if p.TemplateHash == hash {
					newPods = append(newPods, p)
				} else {
					oldPods = append(oldPods, p)
				}
			}
			switch {
			case len(newPods) == 0 && (len(oldPods) == 0 || ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType):
				name := fmt.Sprintf("%s-%s-%s", ds.Name, n.Name, hash[:5])
				c.progress("  kubelet: starting pod %s/%s on %s", ds.Namespace, name, n.Name)
				if _, err := c.RunPod(ctx, newPodFrom(ds.Spec.Template, ds.Namespace, name, hash, controllerRef(ds, "DaemonSet")), n); err != nil {
					return err
				}
			case len(newPods) > 0 && newPods[0].Ready():
				for _, old := range oldPods {
					c.progress("  kubelet: replacing pod %s on %s: stopping the old one (it drains)", old.Key(), n.Name)
					go old.Delete(context.WithoutCancel(ctx))
				}
			}
			if len(newPods)+len(oldPods) > 0 {
				current++
			}
			if len(newPods) > 0 {
				updated++
			}
			for _, p := range append(newPods, oldPods...) {
				if p.Ready() {
					ready++
					break
				}
			}
		}
		desired := int32(len(c.nodesFor(ds.Spec.Template.Spec.NodeSelector))) // #nosec G115
		st := appsv1.DaemonSetStatus{
			ObservedGeneration: ds.Generation, DesiredNumberScheduled: desired, CurrentNumberScheduled: current,
			UpdatedNumberScheduled: updated, NumberReady: ready, NumberAvailable: ready, NumberUnavailable: desired - ready,
		}
		if !equality.Semantic.DeepEqual(ds.Status, st) {
			ds.Status = st
			if err := c.Client.Status().Update(ctx, ds); err != nil && !apierrors.IsConflict(err) {
				return err
			}
		}
	}
	return nil
}

// syncDeployments keeps replicas pods of the current template, surging one at a time.
func (c *Cluster) syncDeployments(ctx context.Context) error {
	list := &appsv1.DeploymentList{}
	if err := c.Client.List(ctx, list); err != nil {
		return err
	}
	for i := range list.Items {
		d := &list.Items[i]
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		hash := templateHash(d.Spec.Template)
		pods, err := c.podsOf(ctx, d.Namespace, ownerUID{string(d.UID)})
		if err != nil {
			return err
		}
		var oldPods, newPods []*Pod
		var newReady, allReady int32
		for _, p := range pods {
			if p.TemplateHash == hash {
				newPods = append(newPods, p)
				if p.Ready() {
					newReady++
				}
			} else {
				oldPods = append(oldPods, p)
			}
			if p.Ready() {
				allReady++
			}
		}
		switch {
		case int32(len(newPods)) < want && int32(len(pods)) <= want && (len(newPods) == 0 || newReady == int32(len(newPods))):
			nodes := c.nodesFor(d.Spec.Template.Spec.NodeSelector)
			if len(nodes) == 0 {
				continue
			}
			// Spread: the node with the fewest of the Deployment's pods.
			n := nodes[0]
			count := func(n *Node) int {
				k := 0
				for _, p := range pods {
					if p.Node == n {
						k++
					}
				}
				return k
			}
			for _, cand := range nodes[1:] {
				if count(cand) < count(n) {
					n = cand
				}
			}
			name := fmt.Sprintf("%s-%s-%d", d.Name, hash[:5], time.Now().UnixNano()%100000)
			c.progress("  kubelet: starting pod %s/%s on %s", d.Namespace, name, n.Name)
			if _, err := c.RunPod(ctx, newPodFrom(d.Spec.Template, d.Namespace, name, hash, controllerRef(d, "Deployment")), n); err != nil {
				return err
			}
		case len(oldPods) > 0 && newReady > 0 && allReady > want-1:
			c.progress("  kubelet: rolling %s/%s: stopping old pod %s", d.Namespace, d.Name, oldPods[0].Name)
			go oldPods[0].Delete(context.WithoutCancel(ctx))
		case int32(len(newPods)) > want:
			go newPods[len(newPods)-1].Delete(context.WithoutCancel(ctx))
		}
		st := appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: int32(len(pods)), UpdatedReplicas: int32(len(newPods)),
			ReadyReplicas: allReady, AvailableReplicas: allReady, UnavailableReplicas: max(0, want-allReady)}
		if d.Status.ObservedGeneration != st.ObservedGeneration || d.Status.Replicas != st.Replicas || d.Status.UpdatedReplicas != st.UpdatedReplicas ||
			d.Status.ReadyReplicas != st.ReadyReplicas || d.Status.AvailableReplicas != st.AvailableReplicas {
			d.Status = st
			if err := c.Client.Status().Update(ctx, d); err != nil && !apierrors.IsConflict(err) {
				return err
			}
		}
	}
	return nil
}

// syncEndpoints writes one EndpointSlice per Service with a selector: its ready pods, the target port of
// each service port resolved against the pod's named container ports.
func (c *Cluster) syncEndpoints(ctx context.Context) error {
	svcs := &corev1.ServiceList{}
	if err := c.Client.List(ctx, svcs); err != nil {
		return err
	}
	pods := &corev1.PodList{}
	if err := c.Client.List(ctx, pods); err != nil {
		return err
	}
	for _, s := range svcs.Items {
		if len(s.Spec.Selector) == 0 {
			continue
		}
		sel := labels.SelectorFromSet(s.Spec.Selector)
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name + "-local",
				Labels: map[string]string{discoveryv1.LabelServiceName: s.Name, discoveryv1.LabelManagedBy: "localcluster"}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		var sample *corev1.Pod
		for i := range pods.Items {
			pod := &pods.Items[i]
			if pod.Namespace != s.Namespace || !sel.Matches(labels.Set(pod.Labels)) || pod.Status.PodIP == "" || pod.DeletionTimestamp != nil {
				continue
			}
			ready := podReady(pod)
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{pod.Status.PodIP},
				Conditions: discoveryv1.EndpointConditions{Ready: new(ready), Serving: new(ready), Terminating: new(false)},
				NodeName:   new(pod.Spec.NodeName),
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
			})
			sample = pod
		}
		sort.Slice(slice.Endpoints, func(i, j int) bool { return slice.Endpoints[i].Addresses[0] < slice.Endpoints[j].Addresses[0] })
		for _, sp := range s.Spec.Ports {
			port := sp.TargetPort.IntValue()
			if sp.TargetPort.Type == intstr.String && sample != nil {
				port = namedPort(sample, sp.TargetPort.StrVal)
			}
			if port == 0 {
				port = int(sp.Port)
			}
			slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: new(sp.Name), Port: new(int32(port)), Protocol: new(sp.Protocol)}) // #nosec G115
		}
		live := &discoveryv1.EndpointSlice{}
		err := c.Client.Get(ctx, client.ObjectKeyFromObject(slice), live)
		switch {
		case apierrors.IsNotFound(err):
			if err := c.Client.Create(ctx, slice); err != nil {
				return err
			}
		case err != nil:
			return err
		case fmt.Sprint(live.Endpoints) != fmt.Sprint(slice.Endpoints) || fmt.Sprint(live.Ports) != fmt.Sprint(slice.Ports):
			live.Endpoints, live.Ports = slice.Endpoints, slice.Ports
			if err := c.Client.Update(ctx, live); err != nil && !apierrors.IsConflict(err) {
				return err
			}
		}
	}
	return nil
}

// nodesFor returns the nodes whose labels (kubernetes.io/hostname, kubernetes.io/os) match a selector.
func (c *Cluster) nodesFor(sel map[string]string) []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		l := labels.Set{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}
		if labels.SelectorFromSet(sel).Matches(l) {
			out = append(out, n)
		}
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func namedPort(p *corev1.Pod, name string) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}

// syncServiceRules plays kube-proxy: in every node namespace, a service address goes to one of its ready
// endpoints (traffic the mesh does not capture: pods outside the mesh, the proxies' own connections).
// It also refreshes every pod's hosts file, which stands for cluster DNS.
func (c *Cluster) syncServiceRules(ctx context.Context) error {
	slices := &discoveryv1.EndpointSliceList{}
	if err := c.Client.List(ctx, slices); err != nil {
		return err
	}
	svcs := &corev1.ServiceList{}
	if err := c.Client.List(ctx, svcs); err != nil {
		return err
	}
	bySvc := map[string]*discoveryv1.EndpointSlice{}
	for i := range slices.Items {
		s := &slices.Items[i]
		bySvc[s.Namespace+"/"+s.Labels[discoveryv1.LabelServiceName]] = s
	}
	var b, reject strings.Builder
	b.WriteString("*nat\n:LOCALCLUSTER-SERVICES - [0:0]\n")
	reject.WriteString("*filter\n:LOCALCLUSTER-REJECT - [0:0]\n")
	for _, s := range svcs.Items {
		slice := bySvc[s.Namespace+"/"+s.Name]
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone || slice == nil {
			continue
		}
		var eps []string
		for _, e := range slice.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				eps = append(eps, e.Addresses[0])
			}
		}
		for i, sp := range s.Spec.Ports {
			if i >= len(slice.Ports) || len(eps) == 0 {
				// As kube-proxy does: a service without a ready endpoint refuses at once, rather than
				// leaving clients to time out on an address nothing answers.
				fmt.Fprintf(&reject, "-A LOCALCLUSTER-REJECT -d %s/32 -p tcp --dport %d -j REJECT --reject-with tcp-reset\n", s.Spec.ClusterIP, sp.Port)
				continue
			}
			target := *slice.Ports[i].Port
			for j, ep := range eps {
				stat := ""
				if left := len(eps) - j; left > 1 {
					stat = fmt.Sprintf("-m statistic --mode random --probability %.5f ", 1/float64(left))
				}
				fmt.Fprintf(&b, "-A LOCALCLUSTER-SERVICES -d %s/32 -p tcp --dport %d %s-j DNAT --to-destination %s:%d\n", s.Spec.ClusterIP, sp.Port, stat, ep, target)
			}
		}
	}
	b.WriteString("COMMIT\n")
	reject.WriteString("COMMIT\n")
	b.WriteString(reject.String())
	rules := b.String()
	if rules == c.serviceRules {
		return nil
	}
	for _, n := range c.Nodes {
		if err := inNetns(n.Netns, func() error { return installServiceRules(rules) }); err != nil {
			return fmt.Errorf("service rules on %s: %w", n.Name, err)
		}
	}
	for _, p := range c.Pods() {
		if err := c.writeHosts(ctx, p.Netns); err != nil {
			return err
		}
	}
	c.serviceRules = rules
	return nil
}

func installServiceRules(rules string) error {
	if err := runStdin(rules, "iptables-restore", "--noflush", "--wait"); err != nil {
		return err
	}
	for _, jump := range [][3]string{
		{"nat", "PREROUTING", "LOCALCLUSTER-SERVICES"}, {"nat", "OUTPUT", "LOCALCLUSTER-SERVICES"},
		{"filter", "FORWARD", "LOCALCLUSTER-REJECT"}, {"filter", "OUTPUT", "LOCALCLUSTER-REJECT"},
	} {
		if run("iptables", "-w", "-t", jump[0], "-C", jump[1], "-j", jump[2]) != nil {
			if err := run("iptables", "-w", "-t", jump[0], "-A", jump[1], "-j", jump[2]); err != nil {
				return err
			}
		}
	}
	return nil
}
