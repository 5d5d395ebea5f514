//go:build proxyonly

package main

import "github.com/spf13/cobra"

// binaryName is the name of this build: the proxies' binary, without the xDS server.
const binaryName = "ambient-proxy"

// addXDSCommand adds nothing: the xDS server is left out of this build.
func addXDSCommand(*cobra.Command) {}
