// Package version holds the data plane's version, set at build time with
// -ldflags "-X github.com/ambient-dev/ambient-operator/dataplane/version.Version=...".
package version

import "runtime/debug"

// Version of this build; "dev" when built without the linker flag.
var Version = "dev"

// GitCommit returns the VCS revision recorded by the Go toolchain, if any.
func GitCommit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}
