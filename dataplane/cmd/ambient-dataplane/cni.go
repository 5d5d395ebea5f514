package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambient-dev/ambient-operator/dataplane/redirect"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

func newCNICommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cni",
		Short: "The CNI plugin of in-pod redirection, and its installer",
		Long: `Installed into the node's CNI bin directory as "ambient-cni", this binary is a chained CNI plugin
(spec 1.0: ADD, DEL, CHECK, VERSION) that tells the node agent (ambient-dataplane node --cni-socket)
about each pod's network namespace. "cni install" puts it on the node and keeps it there; "cni plugin"
runs the plugin with the runtime's environment (CNI_COMMAND, CNI_NETNS, ...) and standard input.`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "plugin",
		Short: "Run the CNI plugin (what the runtime executes as ambient-cni)",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { redirect.RunPlugin() },
	})
	cmd.AddCommand(newCNIInstallCommand())
	return cmd
}

func newCNIInstallCommand() *cobra.Command {
	in := redirect.Installer{}
	var once bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the plugin on the node, keep it installed, remove it on SIGTERM",
		Long: `install copies this binary into --bin-dir as ambient-cni and appends the plugin to the chain of the
network configuration the runtime uses (the first configuration file of --conf-dir). It then checks
every --interval that the entry is still there (network plugins rewrite their configuration) and, on
SIGTERM, removes the entry and the binary. With --once it installs and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logging, err := telemetry.NewLogging(os.Stderr, "info")
			if err != nil {
				return err
			}
			log := logging.Logger().WithName("cni-install")
			if in.Binary == "" {
				if in.Binary, err = os.Executable(); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			for {
				changed, err := in.Install()
				switch {
				case err != nil && once:
					return err
				case err != nil:
					log.Error(err, "Installing the CNI plugin; retrying")
				case changed:
					log.Info("Installed the CNI plugin", "binDir", in.BinDir, "confDir", in.ConfDir)
				}
				if once {
					return nil
				}
				select {
				case <-ctx.Done():
					if err := in.Uninstall(); err != nil {
						return err
					}
					log.Info("Removed the CNI plugin")
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().StringVar(&in.BinDir, "bin-dir", "/host/opt/cni/bin", "The node's CNI bin directory (mounted).")
	cmd.Flags().StringVar(&in.ConfDir, "conf-dir", "/host/etc/cni/net.d", "The node's CNI configuration directory (mounted).")
	cmd.Flags().StringVar(&in.AgentSocket, "agent-socket", "/var/run/ambient/cni.sock", "The node agent's socket as the plugin sees it on the host.")
	cmd.Flags().StringVar(&in.LogFile, "log-file", "/var/run/ambient/cni.log", "Where the plugin writes its diagnostics on the host.")
	cmd.Flags().StringVar(&in.Binary, "binary", "", "Binary to install (default: this executable).")
	cmd.Flags().BoolVar(&once, "once", false, "Install and exit.")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "How often to check that the plugin is still installed.")
	return cmd
}
