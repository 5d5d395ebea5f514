// Command ambient-dataplane is the mesh data plane: the node proxy, the waypoint, the compact xDS server
// with the certificate authority, and the CNI plugin / node agent.
//
// Built with -tags proxyonly it is ambient-proxy, the same commands without the xDS server: the node
// proxy and the waypoint run that build, which does not link the Kubernetes client libraries the server
// needs, so that a proxy starts with less than half the memory (docs/performance.md).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/ambient-dev/ambient-operator/dataplane/redirect"
	"github.com/ambient-dev/ambient-operator/dataplane/version"
)

func main() {
	// Runtimes execute CNI plugins by name with no arguments: installed as ambient-cni, be the plugin.
	if filepath.Base(os.Args[0]) == redirect.PluginName {
		redirect.RunPlugin()
		return
	}
	if err := newRootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   binaryName,
		Short: "The ambient mesh data plane: node proxy, waypoint, xDS server and CA, CNI agent",
		Long: binaryName + ` runs one role of the sidecar-less mesh data plane.

The operator starts it with the right subcommand and flags; every port and path is a flag so that
tests and local runs can move them.`,
		SilenceUsage: true,
	}
	root.AddCommand(newVersionCommand())
	addProxyCommands(root)
	root.AddCommand(newCNICommand())
	addXDSCommand(root)
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this build",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			commit := version.GitCommit()
			if commit == "" {
				commit = "unknown"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (commit %s, %s, %s/%s)\n", binaryName,
				version.Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
