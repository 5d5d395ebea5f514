// Package localcluster runs a multi-node mesh on one machine, for `make demo` and the end-to-end suite:
// a "cluster" network namespace holds the API server (envtest's kube-apiserver and etcd, built from
// source), the real operator binary and the xDS server; nodes and pods are network namespaces joined by
// veth links; the package plays the kubelet and the DaemonSet, Deployment and EndpointSlice controllers,
// so that the data plane runs as real ambient-dataplane processes started from the pod specs the operator
// produced. Only loopback and the addresses of the namespaces it creates carry traffic.
package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// ip runs the ip command.
func ip(args ...string) error { return run("ip", args...) }

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// inNetns runs f on an OS thread inside the named network namespace; sockets created there stay there.
func inNetns(name string, f func() error) error {
	target, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer func() { _ = target.Close() }()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer func() { _ = orig.Close() }()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, err) // the thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

// CheckPrerequisites says what is missing to run a local cluster: root, network namespaces, ip, iptables.
func CheckPrerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root: it creates network namespaces, veth links and iptables rules (run with sudo)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the local cluster needs %s (Debian: apt-get install -y iproute2 iptables): %w", tool, err)
		}
	}
	probe := fmt.Sprintf("ambient-probe-%d", os.Getpid())
	if err := ip("netns", "add", probe); err != nil {
		return fmt.Errorf("network namespaces are not available here: %w", err)
	}
	_ = ip("netns", "del", probe)
	return nil
}

func runStdin(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
