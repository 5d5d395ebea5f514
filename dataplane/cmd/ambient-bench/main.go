// Command ambient-bench is the data-plane benchmark of `make bench`: it compares the node proxies
// (client -> node -> HBONE -> node -> server) with a direct connection and with a chain of two plain TCP
// relays, each a separate process, in a network namespace of its own (see package internal/bench). It
// needs root. The server, relay and client subcommands are the processes the harness starts.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ambient-dev/ambient-operator/dataplane/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	opts := bench.DefaultOptions()
	var throughputMiB int64
	root := &cobra.Command{
		Use:   "ambient-bench",
		Short: "Benchmark the node proxies against a direct connection and two plain TCP relays (needs root)",
		Long: `ambient-bench measures, in one run on one machine and with every proxy a separate process:

  direct   client -> server
  relay2   client -> TCP relay -> TCP relay -> server (io.Copy, no crypto, no HTTP/2)
  hbone    client -> node-a (iptables capture) -> HBONE (mTLS + HTTP/2 CONNECT) -> node-b -> server

bulk throughput over one stream, 1-byte round trips over one long-lived connection (with the whole chain
pinned to one CPU, and unpinned), new connections per second with concurrent clients, and the node
proxies' memory idle and per open idle connection. It prints a table with the ratios against relay2 and
direct and the bars of DESIGN.md section 7.

It creates a network namespace and re-executes itself inside it; every address is a loopback address
of that namespace, which is removed at the end (also on Ctrl-C). It needs root.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.ThroughputBytes = throughputMiB << 20
			var err error
			if os.Getenv(bench.NetnsEnv) != "" {
				err = bench.Inside(cmd.Context(), opts, cmd.OutOrStdout(), cmd.ErrOrStderr())
			} else {
				err = bench.Run(cmd.Context(), opts, os.Args[1:], cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "ambient-bench: %v\n", err)
			}
			return err
		},
	}
	f := root.Flags()
	f.StringVar(&opts.DataplaneBin, "dataplane-bin", "", "The node proxies' binary to measure (ambient-proxy, as the operator runs them, or ambient-dataplane); ambient-proxy is built from the module in the working directory when empty.")
	f.StringVar(&opts.Markdown, "markdown", "", "Also write the tables in Markdown to this file.")
	f.StringSliceVar(&opts.Phases, "phases", opts.Phases, "Phases to run: "+strings.Join(bench.AllPhases, ","))
	f.IntVar(&opts.Repeats, "repeats", opts.Repeats, "Runs per path of the throughput and connection-rate measurements (the median is reported).")
	f.Int64Var(&throughputMiB, "throughput-mib", opts.ThroughputBytes>>20, "A bulk transfer sends this many MiB, or runs for --throughput-duration, whichever ends first.")
	f.DurationVar(&opts.ThroughputDuration, "throughput-duration", opts.ThroughputDuration, "Longest bulk transfer.")
	f.IntVar(&opts.LatencyCount, "latency-count", opts.LatencyCount, "Measured 1-byte round trips per latency run.")
	f.IntVar(&opts.LatencyWarmup, "latency-warmup", opts.LatencyWarmup, "Unmeasured round trips before them.")
	f.IntVar(&opts.LatencyRuns, "latency-runs", opts.LatencyRuns, "Unpinned latency runs per path (the median is reported).")
	f.IntVar(&opts.PinnedRuns, "pinned-runs", opts.PinnedRuns, "Pinned latency runs per path (the median is reported).")
	f.StringVar(&opts.CPUs, "cpus", opts.CPUs, "taskset CPU list every process of the pinned phase runs on.")
	f.IntVar(&opts.ConnRateClients, "connrate-clients", opts.ConnRateClients, "Concurrent clients of the connection-rate measurement.")
	f.DurationVar(&opts.ConnRateDuration, "connrate-duration", opts.ConnRateDuration, "Length of a connection-rate run.")
	f.Int64Var(&opts.ConnRateMax, "connrate-max", opts.ConnRateMax, "Most connections of a connection-rate run.")
	f.IntSliceVar(&opts.MemoryConns, "memory-conns", opts.MemoryConns, "Numbers of open idle connections at which memory is sampled, ascending.")
	f.StringVar(&opts.ProxyLogLevel, "proxy-log-level", opts.ProxyLogLevel, "--log-level of the node proxies (info writes the access log, as shipped).")
	f.BoolVar(&opts.KeepDir, "keep", false, "Keep the working directory (configuration, certificates, process logs).")
	f.StringVar(&opts.ProfileDir, "profile-dir", "", "Write CPU profiles of node-a and node-b, taken during the first hbone throughput and connection-rate runs, to this directory.")
	root.AddCommand(newServerCommand(), newRelayCommand(), newClientCommand())
	return root
}

func newServerCommand() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the benchmark server: echo, or count and discard (started by the harness)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listenTCP(cmd.Context(), listen)
			if err != nil {
				return err
			}
			return bench.Serve(cmd.Context(), l)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "Address to listen on.")
	return cmd
}

func newRelayCommand() *cobra.Command {
	var listen, target string
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a plain TCP relay with io.Copy (started by the harness)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if target == "" {
				return errors.New("--target is required")
			}
			l, err := listenTCP(cmd.Context(), listen)
			if err != nil {
				return err
			}
			return bench.Relay(cmd.Context(), l, target)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "Address to listen on.")
	cmd.Flags().StringVar(&target, "target", "", "Address every connection is relayed to.")
	return cmd
}

func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, errors.New("--listen is required")
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}

// clientFlags are the flags every client measurement shares.
type clientFlags struct {
	src, dst string
}

func (c *clientFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.src, "src", "", "Source address of the connections (empty: any).")
	fs.StringVar(&c.dst, "dst", "", "Address to connect to.")
}

func (c *clientFlags) parse() (netip.Addr, netip.AddrPort, error) {
	var src netip.Addr
	if c.src != "" {
		var err error
		if src, err = netip.ParseAddr(c.src); err != nil {
			return src, netip.AddrPort{}, fmt.Errorf("--src: %w", err)
		}
	}
	dst, err := netip.ParseAddrPort(c.dst)
	if err != nil {
		return src, dst, fmt.Errorf("--dst: %w", err)
	}
	return src, dst, nil
}

func newClientCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Run one client measurement and print its result as JSON (started by the harness)",
	}
	var cf clientFlags
	cf.register(cmd.PersistentFlags())
	run := func(f func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (bench.Result, error)) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			src, dst, err := cf.parse()
			if err != nil {
				return err
			}
			r, err := f(cmd.Context(), src, dst)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
		}
	}

	var maxBytes int64
	var duration time.Duration
	throughput := &cobra.Command{
		Use: "throughput", Short: "Send bulk data over one connection to the sink", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (bench.Result, error) {
			return bench.Throughput(ctx, src, dst, maxBytes, duration)
		}),
	}
	throughput.Flags().Int64Var(&maxBytes, "bytes", 2<<30, "Most bytes to send.")
	throughput.Flags().DurationVar(&duration, "duration", 5*time.Second, "Longest time to send.")

	var count, warmup int
	var maxDuration time.Duration
	latency := &cobra.Command{
		Use: "latency", Short: "Measure 1-byte round trips over one connection", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (bench.Result, error) {
			return bench.Latency(ctx, src, dst, warmup, count, maxDuration)
		}),
	}
	latency.Flags().IntVar(&count, "count", 20000, "Measured round trips.")
	latency.Flags().IntVar(&warmup, "warmup", 1000, "Unmeasured round trips first.")
	latency.Flags().DurationVar(&maxDuration, "max-duration", 30*time.Second, "Longest run.")

	var clients int
	var rateDuration time.Duration
	var maxConns int64
	connrate := &cobra.Command{
		Use: "connrate", Short: "Open, use and close connections from concurrent clients", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (bench.Result, error) {
			return bench.ConnRate(ctx, src, dst, clients, rateDuration, maxConns)
		}),
	}
	connrate.Flags().IntVar(&clients, "clients", 16, "Concurrent clients.")
	connrate.Flags().DurationVar(&rateDuration, "duration", 5*time.Second, "Length of the run.")
	connrate.Flags().Int64Var(&maxConns, "max", 1_000_000, "Most connections.")

	var steps []int
	var stepTimeout time.Duration
	hold := &cobra.Command{
		Use:   "hold",
		Short: "Hold open idle connections; print a JSON line at every step and wait for a line on stdin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, dst, err := cf.parse()
			if err != nil {
				return err
			}
			in := bufio.NewScanner(os.Stdin)
			out := json.NewEncoder(cmd.OutOrStdout())
			return bench.Hold(cmd.Context(), src, dst, steps, stepTimeout, func(open int) error {
				if err := out.Encode(bench.Result{Test: "hold", Open: open}); err != nil {
					return err
				}
				if !in.Scan() {
					return errors.Join(errors.New("stdin closed before the harness asked for the next step"), in.Err())
				}
				return nil
			})
		},
	}
	hold.Flags().IntSliceVar(&steps, "steps", []int{1000}, "Numbers of open connections to reach, ascending.")
	hold.Flags().DurationVar(&stepTimeout, "step-timeout", 2*time.Minute, "Bound on reaching one step.")

	cmd.AddCommand(throughput, latency, connrate, hold)
	return cmd
}
