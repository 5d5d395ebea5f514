package redirect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/ambient-dev/ambient-operator/dataplane/proxy"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
)

// PodEvent is what the CNI plugin tells the node agent about a pod sandbox.
type PodEvent struct {
	// Command is "ADD" or "DEL".
	Command     string   `json:"command"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid,omitempty"`
	ContainerID string   `json:"containerID"`
	Netns       string   `json:"netns"`
	IPs         []string `json:"ips,omitempty"`
}

// pod is a pod whose network namespace the agent knows.
type pod struct {
	key  string // namespace/name
	ns   *os.File
	id   ID
	ips  []netip.Addr
	from string // "cni" or "scan"
	// captured: the redirection rules are installed.
	captured bool
	// early: captured when the CNI plugin reported the pod, before the proxy served it; the agent removes
	// the rules again if the pod turns out not to be in the mesh before the proxy takes it over (Opened).
	early bool
}

func (p *pod) path() string { return fmt.Sprintf("/proc/self/fd/%d", p.ns.Fd()) }

// Agent is the node agent: it learns pod network namespaces from the CNI plugin (and, for pods it missed,
// by scanning /proc), and is the node proxy's Network in in-pod mode: each workload's listeners live in
// its pod's namespace, its connections leave from there, and its redirection rules are installed once its
// listeners are open and removed before they close.
type Agent struct {
	// Socket is the Unix socket the CNI plugin talks to.
	Socket string
	Rules  Rules
	Log    logr.Logger
	// Store gives the node's workloads, used to find the namespaces of pods the CNI plugin did not report.
	Store *state.Store
	// NetnsDir holds the runtime's named pod namespaces (/var/run/netns); scanned for pods the agent missed.
	NetnsDir string
	// ProcRoot is /proc, also scanned (it shows only the processes the agent can see).
	ProcRoot string
	// EnrollWait bounds how long the CNI plugin's ADD waits for the node's configuration to know the pod
	// (DefaultEnrollWait when zero). A pod known to be in the mesh is captured before its containers start;
	// one still unknown then starts uncaptured and is captured once the proxy serves it.
	EnrollWait time.Duration
	// Synced, when set, is closed once Store holds the control plane's full state; the agent then removes
	// the rules a predecessor left in pods that are not in the mesh (see sweep). Nil: no sweep.
	Synced <-chan struct{}

	mu   sync.Mutex
	pods map[string]*pod // by namespace/name
	// rulesMu serializes the changes of pods' rules (and of their captured and early flags), so that a
	// decision made on one snapshot is not undone by one made on another.
	rulesMu sync.Mutex
	changed chan struct{} // see Changed
}

var (
	_ proxy.Network        = (*Agent)(nil)
	_ proxy.WorkloadHooks  = (*Agent)(nil)
	_ proxy.NetworkChanges = (*Agent)(nil)
)

// Changed signals (coalesced) each pod network namespace the CNI plugin reports, so that the proxy opens
// the listeners of a workload whose namespace was not known at once.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.changed == nil {
		a.changed = make(chan struct{}, 1)
	}
	return a.changed
}

// DefaultEnrollWait is the default of Agent.EnrollWait. The xDS server sends a pod once it is scheduled,
// before the kubelet creates its sandbox, so the wait is normally over at once; it is bounded because a
// pod's start waits for it.
const DefaultEnrollWait = 2 * time.Second

// Serve listens on the socket until ctx ends.
func (a *Agent) Serve(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(a.Socket), 0o750); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	var changed <-chan struct{} // subscribed before the socket exists: no snapshot after it is missed
	if a.Store != nil {
		changed = a.Store.Subscribe()
	}
	// A successor (the next node proxy, started beside this one during an upgrade) takes the socket's path
	// over; this agent's listener must then not unlink the path when it closes, which would leave the CNI
	// plugin without an agent. It removes the file at the end only if it is still its own.
	_ = os.Remove(a.Socket)
	l, err := net.Listen("unix", a.Socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.Socket, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	own, err := os.Stat(a.Socket)
	if err != nil {
		_ = l.Close()
		return fmt.Errorf("listen on %s: %w", a.Socket, err)
	}
	defer func() {
		if cur, err := os.Stat(a.Socket); err == nil && os.SameFile(own, cur) {
			_ = os.Remove(a.Socket)
		}
	}()
	if a.Store != nil {
		go a.releaseEarly(ctx, changed)
		if a.Synced != nil {
			go func() {
				select {
				case <-ctx.Done():
				case <-a.Synced:
					a.sweep()
				}
			}()
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/pods", a.handleEvent)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { // #nosec G118 -- the shutdown needs a fresh context: ctx has ended
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	a.Log.Info("Node agent listening for the CNI plugin", "socket", a.Socket)
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (a *Agent) handleEvent(w http.ResponseWriter, r *http.Request) {
	var ev PodEvent
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&ev); err != nil {
		http.Error(w, "bad event: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := a.Handle(ev); err != nil {
		a.Log.Error(err, "Handling a CNI event", "command", ev.Command, "pod", ev.Namespace+"/"+ev.Name)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// Handle records (ADD) or forgets (DEL) a pod's network namespace.
func (a *Agent) Handle(ev PodEvent) error {
	if ev.Namespace == "" || ev.Name == "" {
		return errors.New("event without pod namespace and name")
	}
	key := ev.Namespace + "/" + ev.Name
	switch ev.Command {
	case "ADD":
		f, err := os.Open(ev.Netns) // #nosec G304 -- the namespace path the runtime gave the CNI plugin
		if err != nil {
			return fmt.Errorf("open network namespace of %s: %w", key, err)
		}
		id, err := IDOf(ev.Netns)
		if err != nil {
			_ = f.Close()
			return err
		}
		p := &pod{key: key, ns: f, id: id, from: "cni"}
		for _, s := range ev.IPs {
			if ip, err := netip.ParseAddr(s); err == nil {
				p.ips = append(p.ips, ip.Unmap())
			}
		}
		a.rulesMu.Lock() // a rules change in progress may use the old namespace file
		a.mu.Lock()
		if old := a.pods[key]; old != nil {
			_ = old.ns.Close()
		}
		if a.pods == nil {
			a.pods = map[string]*pod{}
		}
		a.pods[key] = p
		if a.changed != nil {
			select {
			case a.changed <- struct{}{}:
			default:
			}
		}
		a.mu.Unlock()
		a.rulesMu.Unlock()
		a.Log.Info("Pod network namespace reported", "pod", key, "netns", ev.Netns, "ips", ev.IPs)
		return a.captureAtStart(p)
	case "DEL":
		a.forget(key)
	default:
		return fmt.Errorf("unknown command %q", ev.Command)
	}
	return nil
}

// captureAtStart installs the redirection of a pod the configuration says is in the mesh, while the CNI
// plugin's ADD is still running, so that not even the pod's first connection bypasses the mesh: until the
// proxy serves the pod, its connections are refused (fail closed) instead of leaving in plaintext. An error
// fails the ADD, and the runtime retries the pod's sandbox.
func (a *Agent) captureAtStart(p *pod) error {
	w := a.awaitWorkload(p.key)
	if w == nil {
		a.Log.Info("Pod not in the node's configuration yet: it starts uncaptured and is captured once the proxy serves it", "pod", p.key)
		return nil
	}
	a.rulesMu.Lock()
	defer a.rulesMu.Unlock()
	// Decided on the latest snapshot under rulesMu: a change after this point is seen by releaseNotInMesh.
	if w = a.Store.Load().Workload(p.key); w == nil || !capturable(w) {
		return nil
	}
	a.mu.Lock()
	current := a.pods[p.key] == p // not deleted or replaced meanwhile (its namespace file is open)
	served := p.captured          // the proxy got there first (Opened)
	a.mu.Unlock()
	if !current || served {
		return nil
	}
	if err := Install(p.path(), a.Rules); err != nil {
		return fmt.Errorf("install redirection for %s: %w", p.key, err)
	}
	a.mu.Lock()
	p.captured, p.early = true, true
	a.mu.Unlock()
	a.Log.Info("Capturing the traffic of a pod from its start; its connections are refused until the proxy serves it", "pod", p.key)
	return nil
}

// capturable reports whether the node proxy captures the workload's traffic: in the mesh, and not a
// waypoint (which speaks HBONE itself).
func capturable(w *state.Workload) bool { return w.InMesh() && !w.Proto.GetNativeHbone() }

// awaitWorkload returns the pod's workload from the configuration, waiting at most EnrollWait for it.
func (a *Agent) awaitWorkload(key string) *state.Workload {
	if a.Store == nil {
		return nil
	}
	wait := a.EnrollWait
	if wait == 0 {
		wait = DefaultEnrollWait
	}
	deadline := time.Now().Add(wait)
	for {
		if w := a.Store.Load().Workload(key); w != nil {
			return w
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// releaseEarly removes the rules of pods captured at start that the configuration then says are not in
// the mesh (or no longer there) before the proxy took them over, so that they are not left without a
// path. It runs until ctx ends.
func (a *Agent) releaseEarly(ctx context.Context, changed <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		a.releaseNotInMesh()
	}
}

func (a *Agent) releaseNotInMesh() {
	a.rulesMu.Lock()
	defer a.rulesMu.Unlock()
	snap := a.Store.Load()
	a.mu.Lock()
	var release []*pod
	for _, p := range a.pods {
		if p.early && p.captured {
			if w := snap.Workload(p.key); w == nil || !capturable(w) {
				release = append(release, p)
			}
		}
	}
	a.mu.Unlock()
	for _, p := range release {
		if err := Remove(p.path()); err != nil {
			a.Log.Error(err, "Removing the redirection of a pod that is not in the mesh", "pod", p.key)
			continue
		}
		a.mu.Lock()
		p.captured, p.early = false, false
		a.mu.Unlock()
		a.Log.Info("Released a pod captured at start: it is not in the mesh", "pod", p.key)
	}
}

// sweep removes, once, the rules a predecessor left in pods of the node that the complete configuration
// says are not in the mesh. A proxy that drains for its successor leaves every pod's rules in place (the
// successor takes over its listeners); a pod that left the mesh during that hand-over would otherwise keep
// redirecting to listeners that nobody opens. Pods of the mesh keep their rules: the proxy serves them.
func (a *Agent) sweep() {
	if err := a.scan(); err != nil {
		a.Log.Error(err, "Looking for pods a predecessor left captured")
		return
	}
	a.rulesMu.Lock()
	defer a.rulesMu.Unlock()
	snap := a.Store.Load()
	type candidate struct {
		p   *pod
		key string // p.key when listed (podFor may claim a scanned pod meanwhile, under mu)
	}
	a.mu.Lock()
	pods := make([]candidate, 0, len(a.pods))
	for _, p := range a.pods {
		pods = append(pods, candidate{p, p.key})
	}
	a.mu.Unlock()
	for _, c := range pods {
		p := c.p
		if w := workloadOf(snap, c.key, p.ips); w != nil && capturable(w) {
			continue
		}
		if ok, err := Installed(p.path()); err == nil && ok {
			if err := Remove(p.path()); err != nil {
				a.Log.Error(err, "Removing the redirection a predecessor left in a pod that is not in the mesh", "pod", p.key, "addresses", p.ips)
				continue
			}
			a.mu.Lock()
			p.captured, p.early = false, false
			a.mu.Unlock()
			a.Log.Info("Removed the redirection a predecessor left in a pod that is not in the mesh", "pod", p.key, "addresses", p.ips)
		}
		// Found by the scan and not in the mesh: the proxy will not claim it (a pod that joins later is
		// found by a new scan), so do not hold its namespace open.
		a.mu.Lock()
		if p.key == "" {
			_ = p.ns.Close()
			delete(a.pods, "scan:"+p.id.String())
		}
		a.mu.Unlock()
	}
}

// workloadOf is the workload of a pod the agent knows: by name (key) when the CNI plugin reported it or
// the proxy claimed it, else by one of the addresses found in its namespace.
func workloadOf(snap *state.Snapshot, key string, ips []netip.Addr) *state.Workload {
	if key != "" {
		return snap.Workload(key)
	}
	for _, ip := range ips {
		if w := snap.WorkloadByAddr(ip); w != nil {
			return w
		}
	}
	return nil
}

func (a *Agent) forget(key string) {
	a.rulesMu.Lock() // a rules change in progress uses the namespace file: close it after
	defer a.rulesMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.pods[key]; p != nil {
		_ = p.ns.Close()
		delete(a.pods, key)
		a.Log.Info("Pod removed", "pod", key)
	}
}

// podFor finds the namespace of a workload: from the CNI plugin, else by scanning /proc for a namespace
// that holds one of the workload's addresses (pods started before the agent, or whose event was missed).
func (a *Agent) podFor(w *state.Workload) (*pod, error) {
	a.mu.Lock()
	p := a.pods[w.Key]
	a.mu.Unlock()
	if p != nil {
		return p, nil
	}
	if err := a.scan(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, addr := range w.Addresses {
		for _, cand := range a.pods {
			if cand.key == "" && containsAddr(cand.ips, addr) {
				cand.key = w.Key
				delete(a.pods, "scan:"+cand.id.String())
				a.pods[w.Key] = cand
				a.Log.Info("Found a pod's network namespace by its address", "pod", w.Key, "address", addr.String())
				return cand, nil
			}
		}
	}
	return nil, fmt.Errorf("network namespace of %s not known yet", w.Key)
}

func (id ID) String() string {
	return strconv.FormatUint(id.Dev, 10) + ":" + strconv.FormatUint(id.Ino, 10)
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// scan records every network namespace of the node that the agent does not know yet, with its
// addresses, as unclaimed candidates: the runtime's named namespaces (NetnsDir) and those of the
// processes under ProcRoot.
func (a *Agent) scan() error {
	root := a.ProcRoot
	if root == "" {
		root = "/proc"
	}
	var paths []string
	if entries, err := os.ReadDir(root); err == nil {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				paths = append(paths, filepath.Join(root, e.Name(), "ns", "net"))
			}
		}
	}
	if a.NetnsDir != "" {
		if entries, err := os.ReadDir(a.NetnsDir); err == nil {
			for _, e := range entries {
				paths = append(paths, filepath.Join(a.NetnsDir, e.Name()))
			}
		}
	}
	if len(paths) == 0 {
		return fmt.Errorf("scan for pod network namespaces: nothing readable in %s or %q", root, a.NetnsDir)
	}
	own, _ := IDOf("/proc/thread-self/ns/net")
	a.mu.Lock()
	known := map[ID]bool{own: true}
	for _, p := range a.pods {
		known[p.id] = true
	}
	a.mu.Unlock()
	for _, path := range paths {
		id, err := IDOf(path)
		if err != nil || known[id] {
			continue
		}
		known[id] = true
		f, err := os.Open(path) // #nosec G304 -- a /proc namespace file
		if err != nil {
			continue
		}
		var ips []netip.Addr
		if err := doFd(int(f.Fd()), func() error { ips = interfaceAddrs(); return nil }); err != nil || len(ips) == 0 { // #nosec G115
			_ = f.Close()
			continue
		}
		a.mu.Lock()
		if a.pods == nil {
			a.pods = map[string]*pod{}
		}
		a.pods["scan:"+id.String()] = &pod{ns: f, id: id, ips: ips, from: "scan"}
		a.mu.Unlock()
	}
	return nil
}

func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// Listen opens a listener for the workload inside its pod's namespace, on the wildcard address.
func (a *Agent) Listen(ctx context.Context, w *state.Workload, port uint16) (net.Listener, error) {
	p, err := a.podFor(w)
	if err != nil {
		return nil, err
	}
	var l net.Listener
	err = Do(p.path(), func() error {
		var err error
		l, err = proxy.ListenReusePort(ctx, netip.AddrPortFrom(netip.IPv6Unspecified(), port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in the namespace of %s: %w", w.Key, err)
	}
	return l, nil
}

// Dial connects from inside the workload's pod namespace (or, for the proxy itself, from its own), marked
// so that the pod's rules do not capture it.
func (a *Agent) Dial(ctx context.Context, w *state.Workload, dst netip.AddrPort) (net.Conn, error) {
	if w == nil {
		return proxy.DialFrom(ctx, netip.Addr{}, dst, int(a.Rules.Mark))
	}
	p, err := a.podFor(w)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = Do(p.path(), func() error {
		var err error
		c, err = proxy.DialFrom(ctx, netip.Addr{}, dst, int(a.Rules.Mark))
		return err
	})
	return c, err
}

// OriginalDestination reads SO_ORIGINAL_DST.
func (a *Agent) OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	return proxy.OriginalDestination(c)
}

// Opened installs the workload's redirection once its listeners are open: from now on its new
// connections are captured.
func (a *Agent) Opened(w *state.Workload) error {
	p, err := a.podFor(w)
	if err != nil {
		return err
	}
	a.rulesMu.Lock()
	defer a.rulesMu.Unlock()
	if err := Install(p.path(), a.Rules); err != nil {
		return fmt.Errorf("install redirection for %s: %w", w.Key, err)
	}
	a.mu.Lock()
	p.captured, p.early = true, false
	a.mu.Unlock()
	a.Log.Info("Capturing the traffic of a pod", "pod", w.Key, "via", p.from)
	return nil
}

// Closing removes the workload's redirection before its listeners close (it left the mesh); its
// established connections go on.
func (a *Agent) Closing(key string) {
	a.rulesMu.Lock()
	defer a.rulesMu.Unlock()
	a.mu.Lock()
	p := a.pods[key]
	a.mu.Unlock()
	if p == nil || !p.captured {
		return
	}
	if err := Remove(p.path()); err != nil {
		a.Log.Error(err, "Removing the redirection of a pod", "pod", key)
		return
	}
	a.mu.Lock()
	p.captured = false
	a.mu.Unlock()
	a.Log.Info("Stopped capturing the traffic of a pod", "pod", key)
}

// Pods returns the pods the agent knows and whether each is captured, for /config_dump.
func (a *Agent) Pods() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]bool{}
	for k, p := range a.pods {
		if p.key != "" {
			out[k] = p.captured
		}
	}
	return out
}

// Close releases the namespaces the agent holds.
func (a *Agent) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, p := range a.pods {
		_ = p.ns.Close()
		delete(a.pods, k)
	}
}
