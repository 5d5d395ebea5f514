package redirect

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Rules are the pod-local redirection rules.
type Rules struct {
	// Outbound is the node proxy's outbound port (15001).
	Outbound uint16
	// InboundPlaintext is its inbound plaintext port (15006).
	InboundPlaintext uint16
	// HBONE is its HBONE port (15008): not redirected, the proxy listens there in the pod.
	HBONE uint16
	// Mark is the proxy's SO_MARK: its own connections are never redirected.
	Mark uint32
}

// Chain names. The jumps into them are the only changes to the pod's built-in chains.
const (
	chainOutput     = "AMBIENT_OUTPUT"
	chainPrerouting = "AMBIENT_PREROUTING"
)

// restoreScript renders the nat table of a pod: everything TCP the pod sends goes to the proxy's outbound
// listener, except the proxy's own traffic (marked) and the pod's loopback; everything TCP the pod
// receives goes to the inbound plaintext listener, except HBONE (15008) and the proxy's own connections.
func (r Rules) restoreScript(loopback string) string {
	mark := fmt.Sprintf("0x%x/0xfff", r.Mark)
	var b strings.Builder
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n:%s - [0:0]\n", chainOutput, chainPrerouting)
	fmt.Fprintf(&b, "-A %s -m mark --mark %s -j RETURN\n", chainOutput, mark)
	fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", chainOutput, loopback)
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainOutput, r.Outbound)
	fmt.Fprintf(&b, "-A %s -p tcp --dport %d -j RETURN\n", chainPrerouting, r.HBONE)
	fmt.Fprintf(&b, "-A %s -m mark --mark %s -j RETURN\n", chainPrerouting, mark)
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", chainPrerouting, r.InboundPlaintext)
	b.WriteString("COMMIT\n")
	return b.String()
}

type family struct {
	save, restore, iptables, loopback string
}

var families = []family{
	{save: "iptables-save", restore: "iptables-restore", iptables: "iptables", loopback: "127.0.0.0/8"},
	{save: "ip6tables-save", restore: "ip6tables-restore", iptables: "ip6tables", loopback: "::1/128"},
}

// Install puts the rules into the namespace at path. It is idempotent: the chains are replaced and the
// jumps added once. It also lets listeners hand their pending connections to a successor when they close
// (net.ipv4.tcp_migrate_req), so that replacing the node proxy loses no new connection.
func Install(path string, r Rules) error {
	return Do(path, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1"), 0o600); err != nil {
			return fmt.Errorf("enable tcp_migrate_req: %w", err)
		}
		for _, f := range families {
			if f.iptables == "ip6tables" && !ipv6Enabled() {
				continue
			}
			if err := run(f.restore, r.restoreScript(f.loopback), "--noflush", "--wait"); err != nil {
				return err
			}
			for _, jump := range [][]string{{"OUTPUT", chainOutput}, {"PREROUTING", chainPrerouting}} {
				if run(f.iptables, "", "-w", "-t", "nat", "-C", jump[0], "-p", "tcp", "-j", jump[1]) == nil {
					continue
				}
				if err := run(f.iptables, "", "-w", "-t", "nat", "-I", jump[0], "-p", "tcp", "-j", jump[1]); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Remove takes the rules out of the namespace; established connections keep their NAT decision.
func Remove(path string) error {
	return Do(path, func() error {
		var errs []error
		for _, f := range families {
			if f.iptables == "ip6tables" && !ipv6Enabled() {
				continue
			}
			for _, jump := range [][]string{{"OUTPUT", chainOutput}, {"PREROUTING", chainPrerouting}} {
				for run(f.iptables, "", "-w", "-t", "nat", "-D", jump[0], "-p", "tcp", "-j", jump[1]) == nil {
				}
				_ = run(f.iptables, "", "-w", "-t", "nat", "-F", jump[1])
				if err := run(f.iptables, "", "-w", "-t", "nat", "-X", jump[1]); err != nil && !strings.Contains(err.Error(), "No chain") && !strings.Contains(err.Error(), "does not exist") {
					errs = append(errs, err)
				}
			}
		}
		return errors.Join(errs...)
	})
}

// Installed reports whether the namespace at path redirects (the outbound jump exists).
func Installed(path string) (bool, error) {
	var ok bool
	err := Do(path, func() error {
		ok = run("iptables", "", "-w", "-t", "nat", "-C", "OUTPUT", "-p", "tcp", "-j", chainOutput) == nil
		return nil
	})
	return ok, err
}

// Dump returns the nat table of the namespace at path (for /config_dump and debugging).
func Dump(path string) (string, error) {
	var out bytes.Buffer
	err := Do(path, func() error {
		cmd := exec.Command("iptables-save", "-t", "nat")
		cmd.Stdout = &out
		return cmd.Run()
	})
	return out.String(), err
}

func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

func run(name, stdin string, args ...string) error {
	cmd := exec.Command(name, args...) // #nosec G204 -- fixed tool names, arguments built here
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
