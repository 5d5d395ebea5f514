// Package redirect captures the traffic of enrolled pods in their own network namespaces (in-pod mode,
// as Istio ambient): the CNI plugin tells the node agent about each pod's namespace, the node proxy opens
// its listeners inside that namespace, and the agent installs the pod-local iptables rules that send
// outbound TCP to 15001 and inbound TCP to 15006 (HBONE arrives on 15008 directly). Pods keep their
// addresses and nothing changes on the host. Rules are added and removed only for new connections:
// conntrack keeps the decision of established ones, so enrolling or leaving never breaks them.
package redirect

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread that is inside the network namespace at path; sockets f creates stay in that
// namespace, and processes f starts inherit it. The thread goes back to its namespace afterwards (or is
// discarded if it cannot).
func Do(path string, f func() error) error {
	target, err := os.Open(path) // #nosec G304 -- a namespace path from the CNI runtime or /proc
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer func() { _ = target.Close() }()
	return doFd(int(target.Fd()), f) // #nosec G115 -- a file descriptor
}

func doFd(fd int, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer func() { _ = orig.Close() }()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil { // #nosec G115 -- a file descriptor
		// The thread is in the wrong namespace: keep it locked so that it ends with this goroutine.
		return errors.Join(ferr, fmt.Errorf("return from network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// ID identifies a network namespace (device and inode of its file).
type ID struct{ Dev, Ino uint64 }

// IDOf returns the identity of the namespace at path.
func IDOf(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}
