// Package xdsclient is the proxies' side of the compact xDS API: a delta ADS client that feeds a
// state.Store (reconnecting with jittered backoff, resuming with the versions it holds, NACKing invalid
// resources with the reason), and the identity a subscriber presents (NodeInfo). It imports no
// Kubernetes package, so the proxies' binary (ambient-proxy) stays small; the server is package xds.
package xdsclient
