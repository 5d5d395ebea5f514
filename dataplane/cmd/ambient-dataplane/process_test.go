package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

// The process tests run real ambient-dataplane processes: two node proxies and a waypoint, each with its
// own certificates from files, configured by a config file, with real iptables capture. They run inside a
// network namespace the test creates (the test binary re-executes itself there), so that iptables rules
// and loopback addresses touch nothing else. They need root (CI runs as root) and skip otherwise.

const inNetnsEnv = "AMBIENT_PROCESS_TEST_NETNS"

func TestProcesses(t *testing.T) {
	if os.Getenv(inNetnsEnv) != "" {
		runProcessSuite(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("the process tests need root for network namespaces and iptables")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the process tests need %s: %v", tool, err)
		}
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	ns := "ambient-pt-" + hex.EncodeToString(suffix)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	bin := buildBinary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"netns", "exec", ns, self, "-test.run", "^TestProcesses$", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), inNetnsEnv+"="+ns, "AMBIENT_DATAPLANE_BIN="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("inside %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("the process suite failed in %s: %v", ns, err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ambient-dataplane")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ambient-dataplane: %v\n%s", err, out)
	}
	return bin
}

// topology: node-a holds the client (127.0.1.5), node-b the servers (127.0.2.5 and .6), the waypoint
// runs at 127.0.3.5; "echo" (VIP 127.0.10.10) goes direct, "echo-wp" (VIP 127.0.10.30) through the
// waypoint; 127.0.9.9 is outside the mesh.
const configTemplate = `
trustDomain: cluster.local
workloads:
- {name: client, namespace: default, addresses: ["127.0.1.5"], node: node-a, serviceAccount: sleep, canonicalName: sleep}
- name: server
  namespace: default
  addresses: ["127.0.2.5"]
  node: node-b
  serviceAccount: echo
  canonicalName: echo
  services:
  - {service: echo, ports: [{servicePort: 80, targetPort: 8080}]}
  - {service: echo-wp, ports: [{servicePort: 80, targetPort: 8080}]}
- {name: waypoint-0, namespace: default, addresses: ["127.0.3.5"], node: node-c, serviceAccount: waypoint, services: [{service: waypoint, ports: [{servicePort: 15008}]}]}
services:
- {name: echo, namespace: default, addresses: ["127.0.10.10"], ports: [{port: 80, targetPort: 8080}]}
- {name: echo-wp, namespace: default, addresses: ["127.0.10.30"], ports: [{port: 80, targetPort: 8080}], waypoint: waypoint}
- {name: waypoint, namespace: default, addresses: ["127.0.10.20"], ports: [{port: 15008}]}
policies: %s
`

const denySleep = `
- name: deny-sleep
  namespace: default
  scope: NAMESPACE
  action: DENY
  rules: [{clauses: [{matches: [{principals: [{exact: cluster.local/ns/default/sa/sleep}]}]}]}]`

type processEnv struct {
	t      *testing.T
	bin    string
	dir    string
	config string
	procs  sync.Map // name -> *exec.Cmd
}

func runProcessSuite(t *testing.T) {
	g := NewWithT(t)
	env := &processEnv{t: t, bin: os.Getenv("AMBIENT_DATAPLANE_BIN"), dir: t.TempDir()}
	env.config = filepath.Join(env.dir, "config.yaml")
	env.writeConfig("[]")
	env.writeCerts()
	// Capture: the client's TCP connections (not the proxy's own, which carry the mark) go to node-a's
	// outbound listener; plaintext to the server goes to node-b's inbound plaintext listener.
	env.iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.1.5", "-m", "mark", "!", "--mark", "0x539",
		"!", "-d", "127.0.1.5", "-j", "DNAT", "--to-destination", "127.0.1.5:15001")
	env.iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.9.9", "-d", "127.0.2.5", "--dport", "8080",
		"-j", "DNAT", "--to-destination", "127.0.2.5:15006")

	echo(t, "127.0.2.5:8080", "server")
	echo(t, "127.0.9.9:9000", "outside")
	env.start("node-a", "node", "--node-name=node-a", "--admin-address=127.0.1.1:15000", "--metrics-address=127.0.1.1:15020", "--readiness-address=127.0.1.1:15021")
	env.start("node-b", "node", "--node-name=node-b", "--admin-address=127.0.2.1:15000", "--metrics-address=127.0.2.1:15020", "--readiness-address=127.0.2.1:15021", "--drain-seconds=4")
	env.start("waypoint", "waypoint", "--waypoint=waypoint", "--namespace=default", "--listen-address=127.0.3.5:15008",
		"--admin-address=127.0.3.1:15000", "--metrics-address=127.0.3.1:15020", "--readiness-address=127.0.3.1:15021")
	for _, host := range []string{"127.0.1.1", "127.0.2.1", "127.0.3.1"} {
		g.Eventually(func() int { return httpStatus("http://" + host + ":15021/healthz/ready") }, 20*time.Second, 50*time.Millisecond).Should(Equal(200), host)
	}

	t.Run("cross-node TCP over HBONE with identities in metrics", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(clientExchange("127.0.2.5:8080", "hello")).To(Equal("server:hello"))
		g.Expect(clientExchange("127.0.10.10:80", "vip")).To(Equal("server:vip"))
		g.Eventually(func() string { return scrape("http://127.0.2.1:15020/metrics") }).Should(And(
			haveSeries("istio_tcp_connections_opened_total", `reporter="destination"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`,
				`destination_principal="spiffe://cluster.local/ns/default/sa/echo"`, `destination_workload="echo"`),
			haveSeries("istio_tcp_received_bytes_total", `connection_security_policy="mutual_tls"`, `reporter="destination"`),
		))
		g.Expect(scrape("http://127.0.1.1:15020/metrics")).To(haveSeries("istio_tcp_connections_opened_total", `reporter="source"`,
			`source_principal="spiffe://cluster.local/ns/default/sa/sleep"`, `destination_principal="spiffe://cluster.local/ns/default/sa/echo"`,
			`destination_service="echo.default.svc.cluster.local"`))
	})

	t.Run("through the waypoint", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(clientExchange("127.0.10.30:80", "wp")).To(Equal("server:wp"))
		g.Eventually(func() string { return scrape("http://127.0.3.1:15020/metrics") }).Should(
			haveSeries("istio_tcp_connections_opened_total", `reporter="waypoint"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`))
		g.Expect(scrape("http://127.0.2.1:15020/metrics")).To(haveSeries("istio_tcp_connections_opened_total",
			`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/default/sa/waypoint"`))
	})

	t.Run("passthrough outside the mesh and plaintext inbound", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(clientExchange("127.0.9.9:9000", "out")).To(Equal("outside:out"))
		g.Expect(exchangeFrom("127.0.9.9", "127.0.2.5:8080", "plain")).To(Equal("server:plain"))
	})

	t.Run("config_dump and the admin endpoint", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(scrape("http://127.0.1.1:15000/config_dump")).To(And(ContainSubstring(`"127.0.2.5"`), ContainSubstring(`"echo-wp"`)))
		resp, err := http.Post("http://127.0.1.1:15000/logging?level=debug", "", nil)
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(200))
	})

	t.Run("a policy change denies new connections and closes open ones", func(t *testing.T) {
		g := NewWithT(t)
		c := dialClient("127.0.2.5:8080")
		defer func() { _ = c.Close() }()
		g.Expect(roundTrip(c, "1")).To(Equal("server:1"))
		env.writeConfig(denySleep)
		g.Eventually(func() string { got, _ := clientExchange("127.0.2.5:8080", "x"); return got }, 10*time.Second).Should(BeEmpty())
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		g.Expect(err).NotTo(HaveOccurred(), "the open connection is closed")
		env.writeConfig("[]")
		g.Eventually(func() string { got, _ := clientExchange("127.0.2.5:8080", "y"); return got }, 10*time.Second).Should(Equal("server:y"))
	})

	t.Run("a successor takes new connections while the old proxy drains", func(t *testing.T) {
		g := NewWithT(t)
		c := dialClient("127.0.2.5:8080")
		defer func() { _ = c.Close() }()
		g.Expect(roundTrip(c, "old")).To(Equal("server:old"))
		env.start("node-b-next", "node", "--node-name=node-b", "--admin-address=127.0.2.2:15000", "--metrics-address=127.0.2.2:15020", "--readiness-address=127.0.2.2:15021")
		g.Eventually(func() int { return httpStatus("http://127.0.2.2:15021/healthz/ready") }, 20*time.Second, 50*time.Millisecond).Should(Equal(200))
		env.signal("node-b", syscall.SIGTERM)
		// New connections succeed all through the drain, each time.
		for i := range 20 {
			g.Expect(clientExchange("127.0.2.5:8080", fmt.Sprint(i))).To(Equal(fmt.Sprintf("server:%d", i)))
			time.Sleep(50 * time.Millisecond)
		}
		// The old connection still works during the drain window...
		g.Expect(roundTrip(c, "still")).To(Equal("still"))
		// ...and the old process exits after the drain deadline.
		g.Eventually(func() bool { return env.exited("node-b") }, 15*time.Second).Should(BeTrue())
	})
}

func (e *processEnv) writeConfig(policies string) {
	tmp := e.config + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf(configTemplate, policies)), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.config); err != nil {
		e.t.Fatal(err)
	}
}

func (e *processEnv) writeCerts() {
	rootPEM, keyPEM, err := ca.NewRoot("cluster.local", time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	signer, err := ca.NewSigner(rootPEM, keyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "root-cert.pem"), rootPEM, 0o600); err != nil {
		e.t.Fatal(err)
	}
	for _, sa := range []string{"sleep", "echo", "waypoint"} {
		id := identity.New("cluster.local", "default", sa)
		chain, key, err := signer.Issue(id, time.Hour)
		if err != nil {
			e.t.Fatal(err)
		}
		if err := certs.WriteFiles(filepath.Join(e.dir, "certs"), id, chain, key); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *processEnv) iptables(args ...string) {
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		e.t.Fatalf("iptables %v: %v\n%s", args, err, out)
	}
}

// start runs an ambient-dataplane process; its output goes to the test log, and it is stopped at the end.
func (e *processEnv) start(name string, args ...string) {
	args = append(args, "--config="+e.config, "--cert-dir="+filepath.Join(e.dir, "certs"), "--root-cert="+filepath.Join(e.dir, "root-cert.pem"))
	cmd := exec.Command(e.bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			if strings.Contains(s.Text(), `"level":"ERROR"`) || strings.Contains(s.Text(), "Drain") || strings.Contains(s.Text(), "Starting") {
				fmt.Fprintf(os.Stderr, "[%s] %s\n", name, s.Text())
			}
		}
	}()
	e.procs.Store(name, cmd)
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
}

func (e *processEnv) signal(name string, sig syscall.Signal) {
	v, _ := e.procs.Load(name)
	_ = v.(*exec.Cmd).Process.Signal(sig)
}

func (e *processEnv) exited(name string) bool {
	v, _ := e.procs.Load(name)
	cmd := v.(*exec.Cmd)
	return cmd.Process.Signal(syscall.Signal(0)) != nil || processGone(cmd)
}

func processGone(cmd *exec.Cmd) bool {
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(cmd.Process.Pid, &ws, syscall.WNOHANG, nil)
	return err == nil && pid == cmd.Process.Pid
}

func echo(t *testing.T, addr, name string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.WriteString(c, name+":")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// dialClient connects as the client workload (from its address); iptables sends it to node-a.
func dialClient(dst string) net.Conn {
	return dialFrom("127.0.1.5", dst)
}

func dialFrom(src, dst string) net.Conn {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)), Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		return failedConn{err}
	}
	return c
}

func clientExchange(dst, msg string) (string, error) { return exchangeFrom("127.0.1.5", dst, msg) }

func exchangeFrom(src, dst, msg string) (string, error) {
	c := dialFrom(src, dst)
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// roundTrip writes msg on an open connection and reads the echo (the prefix only on the first call).
func roundTrip(c net.Conn, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	want := len(msg)
	if msg == "1" || msg == "old" {
		want += len("server:")
	}
	buf := make([]byte, want)
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func httpStatus(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func scrape(url string) string {
	resp, err := http.Get(url) // #nosec G107 -- test URL
	if err != nil {
		return ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// haveSeries matches Prometheus text holding a non-zero sample of metric with all the label pairs.
func haveSeries(metric string, pairs ...string) OmegaMatcher {
	return WithTransform(func(text string) bool {
		for _, line := range strings.Split(text, "\n") {
			if !strings.HasPrefix(line, metric+"{") || strings.HasSuffix(line, " 0") {
				continue
			}
			all := true
			for _, p := range pairs {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true
			}
		}
		return false
	}, BeTrue())
}

type failedConn struct{ err error }

func (f failedConn) Read([]byte) (int, error)         { return 0, f.err }
func (f failedConn) Write([]byte) (int, error)        { return 0, f.err }
func (f failedConn) Close() error                     { return nil }
func (f failedConn) LocalAddr() net.Addr              { return nil }
func (f failedConn) RemoteAddr() net.Addr             { return nil }
func (f failedConn) SetDeadline(time.Time) error      { return nil }
func (f failedConn) SetReadDeadline(time.Time) error  { return nil }
func (f failedConn) SetWriteDeadline(time.Time) error { return nil }
