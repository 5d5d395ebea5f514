package main

import (
	"context"
	"errors"
)

// startControlPlane subscribes the store to the xDS server and gets certificates from its CA.
func (rt *proxyRuntime) startControlPlane(_ context.Context, _ string) error {
	return errors.New("--xds-address: the xDS client is not available in this build yet; use --config, --cert-dir and --root-cert")
}
