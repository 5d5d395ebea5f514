package localcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// RunApp is the demo application a pod's container runs (AppBin app <kind> ...): "echo" answers every
// connection with its pod name and echoes what it reads; "sleep" idles (a client pod the tests dial from).
func RunApp(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("app: want echo or sleep")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch args[0] {
	case "sleep":
		<-ctx.Done()
		return nil
	case "echo":
		listen := ":8080"
		if len(args) > 1 {
			listen = args[1]
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); _ = l.Close() }()
		name := os.Getenv("POD_NAME")
		for {
			c, err := l.Accept()
			if err != nil {
				return nil
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.WriteString(c, name+": ")
				_, _ = io.Copy(c, c)
			}()
		}
	}
	return fmt.Errorf("app: unknown kind %q", args[0])
}

// AppDeployment is a Deployment of the demo application, optionally pinned to a node.
func AppDeployment(ns, name, kind string, replicas int32, node string, labels map[string]string) *appsv1.Deployment {
	l := map[string]string{"app": name}
	for k, v := range labels {
		l[k] = v
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: l},
				Spec: corev1.PodSpec{
					ServiceAccountName:           name,
					AutomountServiceAccountToken: new(false),
					Containers: []corev1.Container{{
						Name: kind, Image: AppImage + ":latest", Args: []string{"app", kind},
						Env:   []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
						Ports: []corev1.ContainerPort{{Name: "tcp-echo", ContainerPort: 8080}},
					}},
				},
			},
		},
	}
	if node != "" {
		d.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	}
	return d
}

// AppService is a Service in front of an application's pods: port 80 to their named port tcp-echo.
func AppService(ns, name string, labels map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromString("tcp-echo"), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// Dial opens a TCP connection from inside a pod, as its application would: the pod's capture rules
// apply to it.
func (c *Cluster) Dial(pod string, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	p := c.Pod(pod)
	if p == nil {
		return nil, fmt.Errorf("no pod %s", pod)
	}
	var conn net.Conn
	err := inNetns(p.Netns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	return conn, err
}

// Exchange connects from a pod, sends msg, half-closes and returns what came back.
func (c *Cluster) Exchange(pod string, dst netip.AddrPort, msg string) (string, error) {
	conn, err := c.Dial(pod, dst, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		return "", err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// PodsOf returns the running pods whose key starts with namespace/prefix.
func (c *Cluster) PodsOf(namespace, prefix string) []*Pod {
	var out []*Pod
	for _, p := range c.Pods() {
		if p.Namespace == namespace && len(p.Name) >= len(prefix) && p.Name[:len(prefix)] == prefix {
			out = append(out, p)
		}
	}
	return out
}
