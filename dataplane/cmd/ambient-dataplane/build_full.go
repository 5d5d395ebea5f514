//go:build !proxyonly

package main

import "github.com/spf13/cobra"

// binaryName is the name of this build.
const binaryName = "ambient-dataplane"

// addXDSCommand adds the xDS server and CA.
func addXDSCommand(root *cobra.Command) { root.AddCommand(newXDSCommand()) }
